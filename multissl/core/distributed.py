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


def rank() -> int:
    """This process's data-parallel rank (0 without a process group)."""
    return dist.get_rank() if world_size() > 1 else 0


def all_max(x: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum of ``x`` over ranks (no gradient flows through it).

    >>> all_max(torch.tensor([1.0, 2.0])).tolist()
    [1.0, 2.0]
    """
    x = x.detach().clone()
    if world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def rows_before(rows: int, device: torch.device | str = "cpu") -> int:
    """How many rows the ranks before this one hold, given that this one holds ``rows``: where this
    rank's rows start in :func:`all_gather_rows` or :func:`all_gather_with_grad` (0 on one rank).

    >>> rows_before(5)
    0
    """
    if world_size() == 1:
        return 0
    return sum(_row_counts(rows, torch.device(device))[: rank()])


def _row_counts(rows: int, device: torch.device) -> list[int]:
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([rows], dtype=torch.long, device=device))
    return [int(c.item()) for c in counts]


def all_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks, differentiable: the gradient of every rank's loss flows back to every
    rank's ``x`` (summed). A loss computed from the sum is the same on each rank, so each rank's
    gradient is ``world_size()`` times that of the global loss, and DDP's average over ranks gives it.
    Without a process group, ``x`` itself.

    >>> x = torch.ones(2, requires_grad=True)
    >>> all_sum_with_grad(x) is x
    True
    """
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x.contiguous())


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The rows of ``x`` from every rank, concatenated in rank order, differentiable: the gradient that
    any rank's loss sends to a row flows back to the rank that produced it (a plain ``all_gather``
    drops it, so negatives from other ranks would not be pushed away). Ranks may hold different
    numbers of rows. Without a process group, ``x`` itself.

    >>> x = torch.ones(2, 3, requires_grad=True)
    >>> all_gather_with_grad(x) is x
    True
    """
    n = world_size()
    if n == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    counts = _row_counts(x.shape[0], x.device)
    most = max(counts)
    padded = torch.cat([x, x.new_zeros(most - x.shape[0], *x.shape[1:])]) if most > x.shape[0] else x
    parts = all_gather(padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])
