"""The Barlow Twins loss (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", arXiv 2103.03230, section 2, eq. 1-2 and Algorithm 1): the cross-correlation matrix between
the batch-standardised embeddings of two views is pulled to the identity: its diagonal to 1
(invariance), its off-diagonal to 0 with weight lambda (redundancy reduction).

Standardisation follows the released code's batch norm without affine: the mean and the biased
variance over the batch, plus ``eps`` (1e-5) under the square root, so that identical views give a
diagonal of (almost exactly) 1. Under data parallelism the means, variances and the correlation run over
the GLOBAL batch (sums over ranks, with gradient), as the released code does with synchronised batch norm
and an all-reduce of the correlation.
"""

from __future__ import annotations

import torch

from multissl.core.distributed import all_sum, all_sum_with_grad


def _standardise(z: torch.Tensor, count: torch.Tensor, eps: float) -> torch.Tensor:
    mean = all_sum_with_grad(z.sum(0)) / count
    var = all_sum_with_grad((z - mean).pow(2).sum(0)) / count
    return (z - mean) / (var + eps).sqrt()


def barlow_twins_loss(
    z1: torch.Tensor, z2: torch.Tensor, off_diagonal_weight: float = 5e-3, eps: float = 1e-5
) -> torch.Tensor:
    """``sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2`` where ``C = z1n^T z2n / B`` is the
    cross-correlation (D, D) of the two views ``z1`` and ``z2`` (B, D), each standardised per feature over
    the global batch. The paper's lambda is 5e-3. Each rank returns the same global loss; its
    gradient is summed over ranks, so DDP's average gives the global one. Computed in float32; a
    scalar.

    >>> z = torch.tensor([[1.0, 2.0], [-1.0, 0.0]])  # standardised: [[1, 1], [-1, -1]]
    >>> round(barlow_twins_loss(z, z, off_diagonal_weight=0.5).item(), 4)  # C = [[1, 1], [1, 1]]
    1.0
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"barlow_twins: expected two views (B, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    z1, z2 = z1.float(), z2.float()
    count = all_sum(z1.new_tensor(float(z1.shape[0])))
    if count < 2:
        raise ValueError(f"barlow_twins: the global batch needs at least 2 rows, got {int(count)}")
    with torch.autocast(device_type=z1.device.type, enabled=False):  # float32 products even under autocast
        products = _standardise(z1, count, eps).T @ _standardise(z2, count, eps)
    c = all_sum_with_grad(products) / count
    on_diagonal = (1.0 - c.diagonal()).pow(2).sum()
    off_diagonal = c.pow(2).sum() - c.diagonal().pow(2).sum()
    return on_diagonal + off_diagonal_weight * off_diagonal
