"""The SimCSE loss (Gao et al. 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings",
arXiv 2104.08821, section 3 eq. 1 and section 4 eq. 5): InfoNCE with in-batch negatives. Anchor i must
pick out its positive among the positives of every example of the batch (and, supervised, among their
hard negatives too), by cosine similarity / temperature:

    l_i = -log  e^{sim(h_i, h_i+)/t} / sum_j (e^{sim(h_i, h_j+)/t} + e^{sim(h_i, h_j-)/t})

Unlike NT-Xent the loss is one-sided: only the anchors (view 0) are scored, and the candidates are the
other views only (no anchor is another anchor's negative). The paper's temperature is 0.05.

Under data parallelism the candidates should come from every rank (``gather=True``), gathered with
gradient, so that each anchor sees the global batch's negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multissl.core.distributed import all_gather_with_grad, global_mean, rows_before


def simcse_loss(anchors: torch.Tensor, positives: torch.Tensor, hard_negatives: torch.Tensor | None = None,
                temperature: float = 0.05, gather: bool = False) -> torch.Tensor:
    """The SimCSE loss of ``anchors`` and ``positives`` (N, D) (row i of each from example i) and
    optional ``hard_negatives`` (N, D) or (N, K, D) (K per example), averaged over the anchors. Every
    positive and hard negative of the batch is a candidate of every anchor. With ``gather`` the
    candidates come from every rank (gathered with gradient) and the loss is normalised so that DDP's
    average over ranks gives the global-batch mean and its gradient. Embeddings are l2-normalised here.
    Computed in float32; returns a scalar.

    >>> a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> round(simcse_loss(a, a, temperature=1.0).item(), 4)  # -log(e / (e + 1))
    0.3133
    """
    if anchors.ndim != 2 or anchors.shape != positives.shape or anchors.shape[0] < 1:
        raise ValueError(f"simcse: expected anchors and positives (N, D), N >= 1, got {tuple(anchors.shape)} and "
                         f"{tuple(positives.shape)}")
    if hard_negatives is not None and hard_negatives.ndim == 2:
        hard_negatives = hard_negatives.unsqueeze(1)
    if hard_negatives is not None and (hard_negatives.ndim != 3 or hard_negatives.shape[0] != anchors.shape[0]
                                       or hard_negatives.shape[2] != anchors.shape[1]):
        raise ValueError(f"simcse: expected hard negatives (N, D) or (N, K, D) with N, D = {tuple(anchors.shape)}, "
                         f"got {tuple(hard_negatives.shape)}")
    if temperature <= 0:
        raise ValueError(f"simcse: temperature must be > 0, got {temperature}")
    n, dim = anchors.shape
    a = F.normalize(anchors.float(), dim=-1)
    views = [positives] + ([] if hard_negatives is None else list(hard_negatives.unbind(1)))
    mine = torch.stack([F.normalize(v.float(), dim=-1) for v in views], dim=1)  # (N, 1 + K, D)
    if gather:
        everyone = all_gather_with_grad(mine.reshape(n, -1)).reshape(-1, len(views), dim)
        offset = rows_before(n, a.device)
    else:
        everyone, offset = mine, 0
    candidates = everyone.transpose(0, 1).reshape(-1, dim)  # every positive first, then each hard negative set
    with torch.autocast(device_type=a.device.type, enabled=False):  # float32 products even under autocast
        logits = a @ candidates.T / temperature
    target = torch.arange(n, device=a.device) + offset  # the anchor's own positive
    per_anchor = F.cross_entropy(logits, target, reduction="none")
    if gather:
        return global_mean(per_anchor.sum(), n)
    return per_anchor.mean()
