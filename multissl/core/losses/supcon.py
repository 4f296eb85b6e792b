"""The supervised contrastive loss (Khosla et al. 2020, "Supervised Contrastive Learning",
arXiv 2004.11362, section 3.2, eq. 2, "L_out"): every other embedding with the anchor's label is a
positive, and the anchor's loss is the mean over its positives of ``-log softmax`` of the positive's
similarity among all other embeddings (the 1/|P(i)| outside the log).

An anchor whose label appears nowhere else (no positive; |P(i)| = 0, where eq. 2 is undefined) is left
out: it adds nothing and is not counted in the mean over anchors. With two views per example every
anchor has at least its other view. A batch without any positive gives 0.

The released code multiplies the loss by temperature / 0.07 (its "base temperature"); the paper's
equation does not, and neither does this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multissl.core.distributed import all_gather_rows, all_gather_with_grad, global_mean, rows_before


def supcon_loss(
    features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, gather: bool = False
) -> torch.Tensor:
    """The L_out loss of ``features`` (N, V, D) (V views of each of N examples) or (N, D) (one view),
    with ``labels`` (N,): each of the N x V embeddings is an anchor, the others with the same label its
    positives and all others its candidates; averaged over the anchors that have a positive. With
    ``gather`` the candidates (and labels) come from every rank, gathered with gradient, and the mean
    runs over the global batch's anchors under DDP's average. Embeddings are l2-normalised here; the
    paper's temperature is 0.1. Computed in float32; returns a scalar.

    >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> round(supcon_loss(z, torch.tensor([0, 1, 0]), temperature=1.0).item(), 4)  # -log(e / (e + 1)); label 1 left out
    0.3133
    """
    if features.ndim == 2:
        features = features.unsqueeze(1)
    if features.ndim != 3 or labels.shape != features.shape[:1]:
        raise ValueError(f"supcon: expected features (N, V, D) or (N, D) and labels (N,), got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"supcon: temperature must be > 0, got {temperature}")
    n, views, dim = features.shape
    z = F.normalize(features.float(), dim=-1)
    if gather:
        everyone = all_gather_with_grad(z.reshape(n, views * dim)).reshape(-1, views, dim)
        all_labels = all_gather_rows(labels.reshape(n, 1)).reshape(-1)
        offset = rows_before(n, z.device)
    else:
        everyone, all_labels, offset = z, labels, 0
    total = everyone.shape[0]
    if views * total < 2:
        raise ValueError(f"supcon: need at least 2 embeddings in the batch, got {views * total}")
    # view-major order: embedding (v, i) is row v * n (anchors) or v * total (candidates) + i
    anchors = z.transpose(0, 1).reshape(views * n, dim)
    candidates = everyone.transpose(0, 1).reshape(views * total, dim)
    anchor_labels, candidate_labels = labels.repeat(views), all_labels.repeat(views)
    itself = (torch.arange(views, device=z.device)[:, None] * total + offset + torch.arange(n, device=z.device))
    itself = itself.reshape(-1)
    is_itself = torch.zeros(views * n, views * total, dtype=torch.bool, device=z.device)
    is_itself[torch.arange(views * n, device=z.device), itself] = True
    with torch.autocast(device_type=anchors.device.type, enabled=False):  # float32 products even under autocast
        logits = (anchors @ candidates.T / temperature).masked_fill(is_itself, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (anchor_labels[:, None] == candidate_labels[None, :]) & ~is_itself
    n_positive = positive.sum(1)
    has_positive = n_positive > 0
    per_anchor = -torch.where(positive, log_prob, 0.0).sum(1)[has_positive] / n_positive[has_positive]
    if gather:
        return global_mean(per_anchor.sum(), int(has_positive.sum()))
    return per_anchor.sum() / has_positive.sum().clamp_min(1)
