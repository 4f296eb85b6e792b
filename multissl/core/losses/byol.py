"""BYOL's loss (Grill et al. 2020, "Bootstrap your own latent", arXiv 2006.07733, section 3.1, eq. 2):
the mean squared error between the l2-normalised online prediction and the l2-normalised target
projection, which equals ``2 - 2 cos(p, z)``. The target comes from the EMA network and is a constant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_i (2 - 2 cos(p_i, z_i))`` for the online network's ``prediction`` (N, D) of one view and
    the target network's projection ``target`` (N, D) of the other view; ``target`` is detached.
    The paper's loss is symmetric: the method adds ``byol_loss(p1, z2) + byol_loss(p2, z1)``.
    Computed in float32; returns a scalar in [0, 4].

    >>> byol_loss(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 3.0]])).item()
    1.0
    """
    if prediction.ndim != 2 or prediction.shape != target.shape:
        raise ValueError(f"byol: expected prediction and target (N, D), got {tuple(prediction.shape)} and "
                         f"{tuple(target.shape)}")
    cos = F.cosine_similarity(prediction.float(), target.detach().float(), dim=-1)
    return (2.0 - 2.0 * cos).mean()
