"""BEST-RQ loss: cross-entropy between predicted code logits and the random-projection quantiser's codes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bestrq_loss(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Per-frame BEST-RQ loss (Chiu et al. 2022, "Self-supervised learning with random-projection quantizer
    for speech recognition", arXiv 2202.01855): the cross-entropy of ``logits`` (N, codebooks, V) against
    the target ``codes`` (N, codebooks) long, averaged over codebooks (the paper's multi-softmax variant
    with one codebook per softmax). Computed in float32; returns (N,).

    Pass only the masked frames and average the result over them to get the training loss.

    >>> logits = torch.zeros(2, 3, 4)
    >>> bestrq_loss(logits, torch.zeros(2, 3, dtype=torch.long))  # uniform: log(4)
    tensor([1.3863, 1.3863])
    """
    if logits.dim() != 3 or codes.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (N, codebooks, V) and codes (N, codebooks), got {tuple(logits.shape)} "
            f"and {tuple(codes.shape)}"
        )
    # cross_entropy wants the classes in dimension 1: (N, V, codebooks) against (N, codebooks)
    ce = F.cross_entropy(logits.float().transpose(1, 2), codes.long(), reduction="none")
    return ce.mean(-1)
