"""What the view-comparing objectives of the self-supervised family share (Barlow Twins, VICReg, SimSiam,
MoCo v3, SwAV, NNCLR, DeepCluster v2, PIRL): checks of the recipe's view counts, the pooled encoder
output of each view (views of one shape in one encoder call), a counter of training batches for the
schedules of objectives without a teacher, and the metrics they log. Their heads' batch norms are
:func:`multissl.core.batchnorm.global_batch_norm`'s (the global batch's statistics, on CPU ranks too).
Nothing here knows the modality or the objective."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from multissl.core.distributed import all_sum
from multissl.core.heads import pool

Inputs = dict[str, torch.Tensor]
Pool = Literal["cls", "mean"]


def check_view_counts(method: str, views: Any, global_views: int = 2, local_views: bool = False) -> None:
    """Raise a one-line ``ValueError`` naming the key when the recipe's ``views`` section does not make
    ``global_views`` global views (images: ``global_crops``; speech: ``crops``) or makes local crops
    where the objective takes none. The sections name their counts differently, so each is read where
    it exists.

    >>> from types import SimpleNamespace
    >>> check_view_counts("vicreg", SimpleNamespace(crops=3))
    Traceback (most recent call last):
    ...
    ValueError: views.crops must be 2 for method vicreg (two global views), got 3
    """
    for key in ("global_crops", "crops"):
        if hasattr(views, key) and getattr(views, key) != global_views:
            raise ValueError(f"views.{key} must be {global_views} for method {method} ({_spell(global_views)} "
                             f"global view{'s' if global_views > 1 else ''}), got {getattr(views, key)}")
    if not local_views and getattr(views, "local_crops", 0) != 0:
        raise ValueError(f"views.local_crops must be 0 for method {method} (it takes no local crops), "
                         f"got {views.local_crops}")


def _spell(n: int) -> str:
    return {1: "one", 2: "two"}.get(n, str(n))


def check_batch_views(method: str, views: list[Inputs], global_views: int, wanted: int = 2,
                      local_views: bool = False) -> int:
    """The batch's rows per view, after checking that it holds ``wanted`` global views (and no local
    ones unless ``local_views``); a one-line error otherwise."""
    if global_views != wanted or (not local_views and len(views) != wanted):
        raise ValueError(f"method {method} compares {wanted} global views of each sample"
                         f"{'' if local_views else ' and no local crops'}, got {global_views} global and "
                         f"{len(views) - global_views} local: set the recipe's views section")
    rows = {next(iter(v.values())).shape[0] for v in views}
    if len(rows) != 1:
        raise ValueError(f"method {method}: the views hold different numbers of samples {sorted(rows)}")
    return rows.pop()


def _shape(inputs: Inputs) -> tuple:
    return tuple((k, tuple(t.shape)) for k, t in sorted(inputs.items()))


def encode_views(encoder: nn.Module, views: list[Inputs], how: Pool) -> list[torch.Tensor]:
    """The pooled encoder output (B, D) of each view: the views of one shape go through the encoder in
    one call (the two global views together, the local crops together), each sample on its own."""
    groups: dict[tuple, list[int]] = {}
    for i, v in enumerate(views):
        groups.setdefault(_shape(v), []).append(i)
    out: list[torch.Tensor] = [torch.empty(0)] * len(views)
    for idx in groups.values():
        both = {k: torch.cat([views[i][k] for i in idx]) for k in views[idx[0]]}
        x, pad = encoder.encode(both)
        for i, chunk in zip(idx, pool(x, pad, encoder.num_extra, how).chunk(len(idx)), strict=True):
            out[i] = chunk
    return out


@contextlib.contextmanager
def batch_statistics(module: nn.Module) -> Iterator[None]:
    """Run ``module``'s batch norms on the batch's statistics without touching their running statistics
    (a momentum encoder's head: it normalises as the online head does, and its buffers are the EMA's)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.training, m.track_running_stats = True, False
    try:
        yield
    finally:
        for m, (training, track) in zip(norms, saved, strict=True):
            m.training, m.track_running_stats = training, track


def count_batch(counter: torch.Tensor, training: bool) -> int:
    """The number of training batches before this one (the value of ``counter``, a long buffer saved in
    checkpoints), and one more counted when ``training``. Objectives without a teacher run their
    schedules on it; it equals the optimiser updates without gradient accumulation."""
    before = int(counter)
    if training:
        counter += 1
    return before


@torch.no_grad()
def global_average(x: torch.Tensor) -> torch.Tensor:
    """The mean of every value of ``x`` over the ranks (a metric; no gradient).

    >>> float(global_average(torch.tensor([1.0, 2.0, 6.0])))
    3.0
    """
    x = x.detach().float()
    total, count = all_sum(torch.stack([x.sum(), x.new_tensor(float(x.numel()))]))
    return total / count.clamp_min(1)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The mean cosine similarity of the rows of ``a`` and ``b`` (N, D) over the global batch: how alike
    two views' outputs are (1 for every sample: the views tell nothing apart, or the outputs collapsed)."""
    return global_average(F.cosine_similarity(a.detach().float(), b.detach().float(), dim=-1))


def finite(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is finite (state a method keeps is updated from finite values only)."""
    return bool(torch.isfinite(x).all())
