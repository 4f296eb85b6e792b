"""NNCLR's loss (Dwibedi et al. 2021, "With a Little Help from My Friends: Nearest-Neighbor Contrastive
Learning of Visual Representations", arXiv 2104.14548, section 3.2, eq. 2): the nearest neighbour of an
embedding in a support set (a queue of past embeddings) replaces it as the anchor of an InfoNCE against
the other view's embeddings of the batch, so the positive pair is two different images that the model
already places close together. The queue is passed in and returned updated, never kept here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nearest_neighbours(z: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
    """For each row of ``z`` (N, D), its nearest row by cosine similarity in ``queue`` (Q, D), both
    l2-normalised; returns those (N, D) normalised queue rows, without gradient.

    >>> nearest_neighbours(torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]])).tolist()
    [[0.0, 1.0]]
    """
    if z.ndim != 2 or queue.ndim != 2 or queue.shape[1] != z.shape[1] or queue.shape[0] < 1:
        raise ValueError(f"nnclr: expected embeddings (N, D) and a non-empty queue (Q, D), got {tuple(z.shape)} and "
                         f"{tuple(queue.shape)}")
    with torch.no_grad(), torch.autocast(device_type=z.device.type, enabled=False):
        support = F.normalize(queue.float(), dim=-1)
        return support[(F.normalize(z.float(), dim=-1) @ support.T).argmax(dim=1)]


def nnclr_loss(z: torch.Tensor, other: torch.Tensor, queue: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """``-mean_i log softmax_k(NN(z_i, Q) . p_k / tau)[i]``: the nearest neighbours in ``queue`` (Q, D) of
    one view's embeddings ``z`` (N, D) against the other view's embeddings ``other`` (N, D) (the
    predictor's outputs in the paper's full model), row i of each from the same image; all l2-normalised
    here. Gradient flows through ``other`` only (the neighbours are queue entries). The paper's loss is
    symmetric, ``nnclr_loss(z1, p2, Q) + nnclr_loss(z2, p1, Q)``, which the method assembles; its
    temperature is 0.1. Computed in float32; returns a scalar.

    >>> z = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    >>> round(nnclr_loss(z, z, torch.eye(2), temperature=1.0).item(), 4)  # log(1 + exp((0.1 - 1) / 1.005))
    0.3424
    """
    if other.shape != z.shape:
        raise ValueError(f"nnclr: expected both views (N, D), got {tuple(z.shape)} and {tuple(other.shape)}")
    if temperature <= 0:
        raise ValueError(f"nnclr: temperature must be > 0, got {temperature}")
    neighbours = nearest_neighbours(z, queue)
    with torch.autocast(device_type=z.device.type, enabled=False):  # float32 products even under autocast
        logits = neighbours @ F.normalize(other.float(), dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(z.shape[0], device=logits.device))


@torch.no_grad()
def nnclr_queue_update(queue: torch.Tensor, pointer: int, z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The support queue after the batch ``z`` (N, D) is written into ``queue`` (Q, D), N <= Q, first in
    first out: rows ``pointer, pointer + 1, ...`` (wrapping around) take ``z`` detached, and the pointer
    moves on by N. Returns a new queue and pointer; ``queue`` is not changed. Under data parallelism
    pass the batch gathered from every rank so that all ranks keep the same queue.

    >>> q, p = nnclr_queue_update(torch.zeros(3, 1), 2, torch.tensor([[1.0], [2.0]]))
    >>> q.flatten().tolist(), p
    ([2.0, 0.0, 1.0], 1)
    """
    if z.ndim != 2 or queue.ndim != 2 or z.shape[1] != queue.shape[1] or z.shape[0] > queue.shape[0]:
        raise ValueError(f"nnclr: expected a batch (N, D) no longer than the queue (Q, D), got {tuple(z.shape)} and "
                         f"{tuple(queue.shape)}")
    if not 0 <= pointer < queue.shape[0]:
        raise ValueError(f"nnclr: queue pointer {pointer} is outside the queue of {queue.shape[0]} rows")
    size = queue.shape[0]
    rows = (pointer + torch.arange(z.shape[0], device=queue.device)) % size
    new = queue.clone()
    new[rows] = z.detach().to(queue.dtype)
    return new, (pointer + z.shape[0]) % size
