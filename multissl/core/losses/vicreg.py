"""The VICReg loss (Bardes et al. 2022, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", arXiv 2105.04906, section 3, eq. 1-6 and Algorithm 1): an invariance term
pulls the two views' embeddings together, a variance term keeps each feature's standard deviation over
the batch above gamma = 1, and a covariance term decorrelates the features.

Invariance is the mean squared error over every element, as in the paper's Algorithm 1 and code (eq. 5
sums over features instead); its default weights 25 / 25 / 1 go with that form. Variance uses the
unbiased variance plus eps (1e-4) under the square root; covariance the (B - 1)-normalised covariance,
its off-diagonal squares summed and divided by D. With ``gather`` the variance and covariance run over
every rank's embeddings (gathered with gradient, as the released code does); invariance is per example
and stays local.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multissl.core.distributed import all_gather_with_grad


def _variance(z: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    std = (z.var(dim=0) + eps).sqrt()
    return F.relu(gamma - std).mean()


def _covariance(z: torch.Tensor) -> torch.Tensor:
    z = z - z.mean(dim=0)
    with torch.autocast(device_type=z.device.type, enabled=False):  # float32 products even under autocast
        cov = z.T @ z / (z.shape[0] - 1)
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / z.shape[1]


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gather: bool = False,
) -> torch.Tensor:
    """``lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')]`` for the two views ``z1`` and ``z2``
    (B, D): s the mean squared error, v the mean over features of ``relu(gamma - sqrt(Var + eps))``, c the
    sum of the squared off-diagonal covariances / D. Defaults are the paper's (25, 25, 1, gamma 1, eps
    1e-4). Computed in float32; returns a scalar.

    >>> z1, z2 = torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    >>> round(vicreg_loss(z1, z2, 1.0, 1.0, 1.0, eps=0.0).item(), 4)  # s 1, v 0 + 0.5, c 4 + 0
    5.5
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"vicreg: expected two views (B, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    z1, z2 = z1.float(), z2.float()
    invariance = F.mse_loss(z1, z2)
    if gather:
        z1, z2 = all_gather_with_grad(z1), all_gather_with_grad(z2)
    if z1.shape[0] < 2:
        raise ValueError(f"vicreg: the batch needs at least 2 rows for the variance, got {z1.shape[0]}")
    variance = _variance(z1, gamma, eps) + _variance(z2, gamma, eps)
    covariance = _covariance(z1) + _covariance(z2)
    return invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
