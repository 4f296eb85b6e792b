"""SwAV's swapped prediction loss (Caron et al. 2020, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", arXiv 2006.09882, section 3.1, eq. 2-3, and its multi-crop,
section 3.2): the code (a soft assignment to the prototypes, from Sinkhorn-Knopp) of one view is
predicted from the prototype scores of every other view, local crops included; codes are computed only
for the global crops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multissl.core.losses.sinkhorn import sinkhorn_knopp


@torch.no_grad()
def swav_codes(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3, queue_scores: torch.Tensor | None = None
) -> torch.Tensor:
    """The codes (B, K) of one view from its prototype scores (B, K) by :func:`sinkhorn_knopp` over the
    global batch (paper: epsilon 0.05, 3 iterations). With ``queue_scores`` (Q, K) (the current
    prototypes' scores of stored embeddings from earlier batches, the paper's queue for small batches)
    the assignment is balanced over queue and batch together and only the batch's codes are returned.

    >>> swav_codes(torch.randn(4, 3), queue_scores=torch.randn(8, 3)).shape
    torch.Size([4, 3])
    """
    if queue_scores is None:
        return sinkhorn_knopp(scores, epsilon, iterations)
    if queue_scores.ndim != 2 or scores.ndim != 2 or queue_scores.shape[1] != scores.shape[1]:
        raise ValueError(f"swav: expected scores (B, K) and queue scores (Q, K), got {tuple(scores.shape)} and "
                         f"{tuple(queue_scores.shape)}")
    codes = sinkhorn_knopp(torch.cat([queue_scores, scores]), epsilon, iterations)
    return codes[queue_scores.shape[0]:]


def swav_loss(scores: torch.Tensor, codes: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """The swapped prediction loss: for each view ``s`` with codes (``codes`` (A, B, K), the first A views,
    usually the 2 global crops) and each other view ``t`` of ``scores`` (V, B, K) (all crops), the
    cross-entropy ``-sum_k q_s log softmax(scores_t / temperature)``, averaged over the B samples, over
    the V - 1 other views, then over the A coded views. The paper's temperature is 0.1. Gradient flows
    through ``scores`` only. Computed in float32; returns a scalar.

    >>> scores = torch.zeros(3, 2, 4)  # 2 global + 1 local crop of 2 images, 4 prototypes
    >>> round(swav_loss(scores, torch.full((2, 2, 4), 0.25)).item(), 4)  # log 4
    1.3863
    """
    # A == V == 2 is the paper's setting without multi-crop: each global crop predicts the other's codes
    if scores.ndim != 3 or codes.ndim != 3 or codes.shape[1:] != scores.shape[1:] \
            or not 1 <= codes.shape[0] <= scores.shape[0] or scores.shape[0] < 2:
        raise ValueError(f"swav: expected scores (V, B, K) and codes (A, B, K) with 1 <= A <= V and V >= 2, got "
                         f"{tuple(scores.shape)} and {tuple(codes.shape)}")
    if temperature <= 0:
        raise ValueError(f"swav: temperature must be > 0, got {temperature}")
    n_coded, n_views = codes.shape[0], scores.shape[0]
    log_p = F.log_softmax(scores.float() / temperature, dim=-1)
    # ce[s, t]: codes of view s against the prediction of view t, averaged over samples
    with torch.autocast(device_type=log_p.device.type, enabled=False):  # float32 products even under autocast
        ce = -torch.einsum("sbk,tbk->st", codes.detach().float(), log_p) / scores.shape[1]
    other = ~torch.eye(n_coded, n_views, dtype=torch.bool, device=ce.device)
    return ce[other].mean()
