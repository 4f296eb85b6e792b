"""Reductions over the global batch. Under data parallelism each rank holds a slice of the batch;
the loss is normalised by the global number of masked tokens and the health metrics are computed
over all ranks' rows, so a run on N ranks follows the same trajectory as one rank with N times the
batch. Without an initialised process group every function is local."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of data-parallel ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks (no gradient flows through it).

    >>> all_sum(torch.tensor([1.0, 2.0])).tolist()
    [1.0, 2.0]
    """
    x = x.detach().clone()
    if world_size() > 1:
        dist.all_reduce(x)
    return x


def global_mean(total: torch.Tensor, count: int) -> torch.Tensor:
    """``total / count`` with both summed over ranks, scaled so that DDP's gradient average over
    ranks gives the gradient of the global mean.

    >>> float(global_mean(torch.tensor(6.0), 3))
    2.0
    """
    n = world_size()
    global_count = all_sum(torch.tensor(float(count), device=total.device))
    return total * n / global_count.clamp_min(1.0)


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """The rows of ``x`` from every rank, concatenated in rank order (no gradient; ranks may hold
    different numbers of rows).

    >>> all_gather_rows(torch.ones(2, 3)).shape
    torch.Size([2, 3])
    """
    n = world_size()
    if n == 1:
        return x.detach()
    x = x.detach().contiguous()
    counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(n)]
    dist.all_gather(counts, torch.tensor([x.shape[0]], device=x.device))
    most = int(max(c.item() for c in counts))
    padded = torch.zeros(most, *x.shape[1:], dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts, strict=True)])
