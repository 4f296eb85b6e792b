"""The KoLeo regulariser (Sablayrolles et al. 2019, "Spreading vectors for similarity search",
arXiv 1806.03198, section 3; used on the [CLS] features of DINOv2, Oquab et al. 2023, arXiv 2304.07193,
section 4): the Kozachenko-Leonenko differential entropy estimator, which grows as each feature's
nearest neighbour in the batch moves away, so minimising its negative spreads the features uniformly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORMALIZE_EPS = 1e-8
"""Added to the norm when features are l2-normalised (as DINOv2)."""


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``-mean_i log(min_{j != i} ||f_i - f_j|| + eps)`` over the rows of ``features`` (B, D), B >= 2,
    after l2-normalising each row. The nearest neighbour is chosen without gradient; the gradient flows
    through the distance to it. Computed in float32 over the local batch (DINOv2 does the same, per
    global view); returns a scalar.

    >>> koleo_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])).item() == -torch.tensor(2.0).sqrt().log().item()
    True
    """
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"koleo: expected features (B, D) with B >= 2, got {tuple(features.shape)}")
    x = F.normalize(features.float(), dim=-1, eps=NORMALIZE_EPS)
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        # on unit vectors the nearest neighbour is the one with the largest dot product
        dots = x @ x.T
        dots.fill_diagonal_(-3.0)
        nearest = dots.argmax(dim=1)
    distance = (x - x[nearest]).norm(dim=-1)
    return -(distance + eps).log().mean()
