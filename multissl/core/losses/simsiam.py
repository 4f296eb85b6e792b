"""SimSiam's loss (Chen & He 2021, "Exploring Simple Siamese Representation Learning", arXiv 2011.10566,
section 3, eq. 1-4): the negative cosine similarity between one view's prediction and the other view's
projection, with a stop-gradient on the projection; the paper shows the stop-gradient is what keeps
the outputs from collapsing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def simsiam_loss(prediction: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """``D(p, z) = -mean_i cos(p_i, stopgrad(z_i))`` for the predictor output ``prediction`` (N, D) of one
    view and the projection ``projection`` (N, D) of the other. The paper's symmetric loss is
    ``D(p1, z2) / 2 + D(p2, z1) / 2``, which the method assembles. Computed in float32; returns a
    scalar in [-1, 1].

    >>> simsiam_loss(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[3.0, 0.0], [1.0, -1.0]])).item()
    -0.5
    """
    if prediction.ndim != 2 or prediction.shape != projection.shape:
        raise ValueError(f"simsiam: expected prediction and projection (N, D), got {tuple(prediction.shape)} and "
                         f"{tuple(projection.shape)}")
    return -F.cosine_similarity(prediction.float(), projection.detach().float(), dim=-1).mean()
