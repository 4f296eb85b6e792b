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
