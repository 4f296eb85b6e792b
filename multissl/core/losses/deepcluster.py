"""DeepCluster v2's loss (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting
Cluster Assignments", arXiv 2006.09882, appendix on DeepCluster-v2 and its released code): every crop of
an image is classified, by its scores against the prototypes (the k-means centroids of the previous
epoch's memory bank) divided by a temperature, into the image's k-means cluster. The method runs
k-means and keeps the assignments; this is the loss for one set of prototypes (the released code
averages it over several k-means runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def deepcluster_loss(scores: torch.Tensor, assignments: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """``CE(scores / temperature, assignment)`` averaged over every crop of ``scores`` (V, B, K) (V crops
    of B images against K prototypes) whose image has an assignment: ``assignments`` (B,) long holds
    each image's cluster, negative for an image not yet assigned (left out; 0 if none is). The released
    code's temperature is 0.1. Computed in float32; returns a scalar.

    >>> scores = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # 1 crop of 2 images, 2 prototypes
    >>> round(deepcluster_loss(scores, torch.tensor([0, -1]), temperature=1.0).item(), 4)  # -log(e / (e + 1))
    0.3133
    """
    if scores.ndim != 3 or assignments.shape != scores.shape[1:2]:
        raise ValueError(f"deepcluster: expected scores (V, B, K) and assignments (B,), got {tuple(scores.shape)} "
                         f"and {tuple(assignments.shape)}")
    if temperature <= 0:
        raise ValueError(f"deepcluster: temperature must be > 0, got {temperature}")
    targets = assignments.long().expand(scores.shape[0], -1)
    assigned = targets >= 0
    ce = F.cross_entropy(scores[assigned].float() / temperature, targets[assigned], reduction="sum")
    return ce / assigned.sum().clamp_min(1)
