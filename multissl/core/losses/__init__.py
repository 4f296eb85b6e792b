"""Losses: one per file, each a small pure function with the paper it comes from."""

from multissl.core.losses.bestrq import bestrq_loss
from multissl.core.losses.mae import mae_loss, patchify, unpatchify
from multissl.core.losses.mlm import masked_lm_loss
from multissl.core.losses.regression import regression_loss

__all__ = ["bestrq_loss", "mae_loss", "masked_lm_loss", "patchify", "regression_loss", "unpatchify"]
