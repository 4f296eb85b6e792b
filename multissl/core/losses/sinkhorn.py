"""Sinkhorn-Knopp normalisation (Cuturi 2013, "Sinkhorn Distances", arXiv 1306.0895) as used to turn
prototype scores into soft assignments with equal mass per prototype: SwAV's codes (Caron et al. 2020,
arXiv 2006.09882, section 3.1 and Algorithm 1) and DINOv2's teacher centring (Oquab et al. 2023,
arXiv 2304.07193, section 4).

The assignment matrix Q (K prototypes x B samples) starts as ``exp(scores / epsilon)`` and is rescaled
alternately so that every prototype holds 1/K of the mass and every sample 1/B; after the last step the
sample constraint holds exactly, the prototype one approximately (exactly at convergence). Under data
parallelism B and the sums run over the GLOBAL batch, so the prototypes are balanced over all ranks.
"""

from __future__ import annotations

import torch

from multissl.core.distributed import all_max, all_sum


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Assignments (B, K) from ``scores`` (B, K) (e.g. cosine similarities to prototypes, or DINOv2's
    teacher logits with ``epsilon`` the teacher temperature): each row sums to 1 and, as ``iterations``
    grows, each column to B/K (B counted over ranks). SwAV's defaults: epsilon 0.05, 3 iterations.

    The global maximum is subtracted before the exponential (the result does not change) so that large
    ``scores / epsilon`` do not overflow; a spread of scores / epsilon beyond about 80 still underflows
    in float32. Computed in float32 without gradient.

    >>> q = sinkhorn_knopp(torch.arange(18.0).reshape(6, 3).sin(), epsilon=0.5, iterations=20)
    >>> [round(x, 3) for x in q.sum(1).tolist()], [round(x, 3) for x in q.sum(0).tolist()]
    ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    """
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn_knopp: expected scores (B, K), got {tuple(scores.shape)}")
    if epsilon <= 0 or iterations < 1:
        raise ValueError(f"sinkhorn_knopp: epsilon must be > 0 and iterations >= 1, got {epsilon} and {iterations}")
    scores = scores.detach().float()
    n_prototypes = scores.shape[1]
    n_samples = all_sum(scores.new_tensor(float(scores.shape[0])))
    top = all_max(scores.max() if scores.numel() else scores.new_tensor(float("-inf")))
    q = torch.exp((scores - top) / epsilon).T  # (K, B)
    q /= all_sum(q.sum())
    for _ in range(iterations):
        q /= all_sum(q.sum(dim=1, keepdim=True))  # each prototype: mass 1 ...
        q /= n_prototypes  # ... then 1/K
        q /= q.sum(dim=0, keepdim=True)  # each sample (a column, all on this rank): mass 1 ...
        q /= n_samples  # ... then 1/B
    return (q * n_samples).T
