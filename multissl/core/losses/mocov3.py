"""MoCo v3's contrastive loss (Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised
Vision Transformers", arXiv 2104.02057, section 2 and Algorithm 1): InfoNCE of each query (the online
encoder's prediction) against the keys of the whole batch (the momentum encoder's projections), the key
of the same image being the positive; the loss is multiplied by 2 tau as in the paper's pseudo-code.

The keys come from every rank. They are the momentum encoder's outputs, which get no gradient, so they
are gathered without one (as in the released code); the queries, which carry the gradient, stay local.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multissl.core.distributed import all_gather_rows, rows_before


def mocov3_loss(query: torch.Tensor, key: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """``2 tau * CE(q k_all^T / tau, positives)`` for the queries ``query`` (N, D) of one view and the
    keys ``key`` (N, D) of the other view (row i of each from the same image), both l2-normalised
    here; ``key`` is detached and gathered from every rank. The paper's symmetric loss is
    ``mocov3_loss(q1, k2) + mocov3_loss(q2, k1)``, which the method assembles. The paper's ViT
    temperature is 0.2 (1.0 for ResNets). Computed in float32; a scalar.

    >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> round(mocov3_loss(q, q, temperature=1.0).item(), 4)  # 2 * -log(e / (e + 1))
    0.6265
    """
    if query.ndim != 2 or query.shape != key.shape:
        raise ValueError(f"mocov3: expected query and key (N, D), got {tuple(query.shape)} and {tuple(key.shape)}")
    if temperature <= 0:
        raise ValueError(f"mocov3: temperature must be > 0, got {temperature}")
    q = F.normalize(query.float(), dim=-1)
    keys = all_gather_rows(F.normalize(key.detach().float(), dim=-1))
    positive = torch.arange(q.shape[0], device=q.device) + rows_before(q.shape[0], q.device)
    with torch.autocast(device_type=q.device.type, enabled=False):  # float32 products even under autocast
        logits = q @ keys.T / temperature
    return F.cross_entropy(logits, positive) * (2 * temperature)
