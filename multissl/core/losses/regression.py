"""Regression losses between student predictions and teacher targets at masked positions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def regression_loss(
    pred: torch.Tensor, target: torch.Tensor, beta: float = 0.0, scale: float | None = None
) -> torch.Tensor:
    """Per-position loss: the sum over features of L2 (``beta`` 0) or smooth-L1(``beta``), times
    ``scale`` (default ``1/sqrt(D)``). ``pred`` and ``target`` are (N, D); returns (N,).

    Average the result over masked positions to get the data2vec loss.

    >>> regression_loss(torch.zeros(3, 4), torch.ones(3, 4)).tolist()
    [2.0, 2.0, 2.0]
    """
    pred = pred.float()
    if beta == 0:
        loss = F.mse_loss(pred, target, reduction="none")
    else:
        loss = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    scale = 1.0 / math.sqrt(pred.shape[-1]) if scale is None else scale
    return loss.sum(-1) * scale
