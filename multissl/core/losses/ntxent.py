"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, "A Simple
Framework for Contrastive Learning of Visual Representations", arXiv 2002.05709, section 2.1, eq. 1):
each of the 2N embeddings of a batch of N pairs must pick out its partner among the other 2N - 1 by
cosine similarity / temperature, so every positive pair has 2N - 2 negatives.

Under data parallelism the negatives should come from every rank (``gather=True``), and the gather
must carry gradients back to the rank that produced each embedding; otherwise the other ranks'
anchors never push this rank's embeddings away and the gradient is not that of the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multissl.core.distributed import all_gather_with_grad, global_mean, rows_before


def ntxent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, gather: bool = False) -> torch.Tensor:
    """The NT-Xent loss of two views ``z1`` and ``z2`` (N, D) (row i of each from the same example),
    averaged over the 2N anchors. With ``gather`` the candidates are the embeddings of every rank
    (2 x global batch), gathered with gradient; the loss is then normalised so that DDP's average over
    ranks gives the global-batch mean and its gradient. Embeddings are l2-normalised here. SimCLR's
    temperature is 0.1 for ImageNet (0.5 for CIFAR-10). Computed in float32; returns a scalar.

    >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> round(ntxent_loss(z, z, temperature=1.0).item(), 4)  # -log(e / (e + 1 + 1))
    0.5514
    """
    if z1.ndim != 2 or z1.shape != z2.shape or z1.shape[0] < 1:
        raise ValueError(f"ntxent: expected two views (N, D), N >= 1, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"ntxent: temperature must be > 0, got {temperature}")
    n, dim = z1.shape
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    if gather:
        everyone = all_gather_with_grad(torch.cat([z1, z2], dim=1))  # one gather for both views
        all1, all2 = everyone[:, :dim], everyone[:, dim:]
        offset = rows_before(n, z1.device)
    else:
        all1, all2, offset = z1, z2, 0
    total = all1.shape[0]
    anchors = torch.cat([z1, z2])  # (2n, D): this rank's embeddings
    candidates = torch.cat([all1, all2])  # (2 total, D): view-1 rows of every rank, then view-2 rows
    with torch.autocast(device_type=anchors.device.type, enabled=False):  # float32 products even under autocast
        logits = anchors @ candidates.T / temperature
    local = torch.arange(n, device=z1.device) + offset
    itself = torch.cat([local, local + total])
    partner = torch.cat([local + total, local])
    rows = torch.arange(2 * n, device=z1.device)
    is_itself = torch.zeros_like(logits, dtype=torch.bool)
    is_itself[rows, itself] = True
    logits = logits.masked_fill(is_itself, float("-inf"))  # an embedding is not its own candidate
    per_anchor = F.cross_entropy(logits, partner, reduction="none")
    if gather:
        return global_mean(per_anchor.sum(), 2 * n)
    return per_anchor.mean()
