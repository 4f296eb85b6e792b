"""The EMA teacher: an exponential moving average of the student's parameters.

The teacher's parameters are the fp32 shadow weights themselves (they never receive gradients and
stay fp32 under autocast). A model *declares* what the teacher tracks: pairs of (student, teacher)
modules; inside them, parameter names that start with a ``copied`` prefix are copied each step
instead of averaged. Parts the teacher does not hold are shared with the student and cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
from torch import nn


@dataclass
class EMAConfig:
    """Teacher decay schedule: from ``decay`` to ``end_decay`` over the first updates of the run
    (linearly, as data2vec does, or along a half cosine, as BYOL and DINO do), then constant. Its
    position is the optimiser step (as the learning rate's is), so the two schedules never drift
    apart; an update skipped for a non-finite loss moves neither weights."""

    decay: float = 0.999
    """Decay at the first update."""

    end_decay: float = 0.9999
    """Decay once the anneal is done; 1.0 freezes the teacher from then on."""

    anneal_steps: int = 30000
    """Number of optimiser steps over which the decay rises linearly (when ``anneal_fraction`` is 0)."""

    anneal_fraction: float = 0.0
    """> 0: anneal over this fraction of the run's ``train.max_steps`` instead of ``anneal_steps``,
    so that the teacher reaches its end decay whatever the run's length."""

    shape: Literal["linear", "cosine"] = "linear"
    """linear: ``end - (end - decay) * (1 - t)``; cosine: ``end - (end - decay) * (cos(pi t) + 1) / 2``
    (BYOL, DINO), with ``t`` the share of the anneal done."""

    max_init_share: float = 0.0
    """> 0: where the schedule would leave more than this share of each teacher weight at its initial
    value by the end of the run (the product of the decays), ``1 - decay`` is scaled up at every
    step by the one factor that leaves exactly this share, so that a run of any length ends with a
    teacher that has left its initialisation. Schedules fast enough for their run are unchanged
    (the papers' over their 400k updates). 0: off."""

    def validate(self, where: str = "method.ema") -> None:
        for key in ("decay", "end_decay"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{where}.{key} must be in [0, 1], got {value}")
        if self.anneal_steps < 0:
            raise ValueError(f"{where}.anneal_steps must be >= 0, got {self.anneal_steps}")
        if not 0.0 <= self.anneal_fraction <= 1.0:
            raise ValueError(f"{where}.anneal_fraction must be in [0, 1], got {self.anneal_fraction}")
        if not 0.0 <= self.max_init_share < 1.0:
            raise ValueError(f"{where}.max_init_share must be in [0, 1), got {self.max_init_share}")

    def anneal_length(self, run_steps: int) -> int:
        """Steps of the anneal in a run of ``run_steps`` optimiser steps.

        >>> EMAConfig(anneal_fraction=0.5).anneal_length(600), EMAConfig(anneal_steps=10).anneal_length(600)
        (300, 10)
        """
        if self.anneal_fraction > 0:
            return max(1, round(self.anneal_fraction * run_steps))
        return self.anneal_steps


def annealed_decay(step: int, cfg: EMAConfig, run_steps: int = 0) -> float:
    """The decay for optimiser step ``step`` (0-based) of a run of ``run_steps`` steps.

    >>> annealed_decay(0, EMAConfig(0.9, 1.0, 10)), annealed_decay(5, EMAConfig(0.9, 1.0, 10))
    (0.9, 0.95)
    >>> annealed_decay(50, EMAConfig(0.9, 1.0, anneal_fraction=1.0), run_steps=100)
    0.95
    >>> fast = EMAConfig(0.999, 0.9999, anneal_fraction=1.0, max_init_share=0.05)
    >>> round(math.prod(annealed_decay(s, fast, 100) for s in range(100)), 6)  # 91% without the cap
    0.05
    """
    length = cfg.anneal_length(run_steps)
    scale = _speed_up(cfg.decay, cfg.end_decay, length, run_steps, cfg.max_init_share, cfg.shape)
    return 1.0 - scale * (1.0 - _scheduled_decay(step, cfg.decay, cfg.end_decay, length, cfg.shape))


def _scheduled_decay(step: int, decay: float, end_decay: float, length: int, shape: str = "linear") -> float:
    """
    >>> _scheduled_decay(5, 0.9, 1.0, 10, "cosine"), _scheduled_decay(10, 0.9, 1.0, 10, "cosine")
    (0.95, 1.0)
    """
    if step >= length:
        return end_decay
    left = 1.0 - step / length  # share of the anneal still to come
    if shape == "cosine":
        left = (math.cos(math.pi * step / length) + 1.0) / 2.0
    return end_decay - (end_decay - decay) * left


@lru_cache(maxsize=16)
def _speed_up(decay: float, end_decay: float, length: int, run_steps: int, max_share: float,
              shape: str = "linear") -> float:
    """The factor on ``1 - decay`` that leaves ``max_share`` of the teacher at its initial value after
    ``run_steps`` updates, or 1 where the schedule already leaves less (found by bisection)."""
    if max_share <= 0 or run_steps <= 0:
        return 1.0
    gaps = [1.0 - _scheduled_decay(s, decay, end_decay, length, shape) for s in range(run_steps)]

    def log_share(c: float) -> float:
        return sum(math.log1p(-min(c * g, 1.0 - 1e-12)) for g in gaps)

    target = math.log(max_share)
    if log_share(1.0) <= target or max(gaps) == 0.0:
        return 1.0
    lo, hi = 1.0, 1.0 / max(gaps)  # at hi the fastest step is a plain copy
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if log_share(mid) <= target else (mid, hi)
    return hi


class EMA:
    """Averages ``pairs`` of (student, teacher) modules with ``torch._foreach_*`` ops.

    >>> s, t = nn.Linear(2, 2), nn.Linear(2, 2)
    >>> ema = EMA([(s, t)])
    >>> ema.step(0.0)  # decay 0 copies the student
    >>> bool(torch.equal(s.weight, t.weight))
    True
    """

    def __init__(self, pairs: Sequence[tuple[nn.Module, nn.Module]], copied: Sequence[str] = ()):
        self.avg_student: list[torch.Tensor] = []
        self.avg_teacher: list[torch.Tensor] = []
        self.copy_student: list[torch.Tensor] = []
        self.copy_teacher: list[torch.Tensor] = []
        for student, teacher in pairs:
            t_params = dict(teacher.named_parameters())
            for name, p in student.named_parameters():
                if name not in t_params:
                    raise KeyError(f"teacher has no parameter {name!r}")
                t = t_params[name]
                if t.dtype != torch.float32:
                    raise TypeError(f"teacher parameter {name!r} must be fp32 (the shadow), got {t.dtype}")
                copy = any(name.startswith(c) for c in copied) or not p.requires_grad
                (self.copy_student if copy else self.avg_student).append(p)
                (self.copy_teacher if copy else self.avg_teacher).append(t)
            for name, buf in student.named_buffers():
                tb = dict(teacher.named_buffers()).get(name)
                if tb is not None and tb.dtype == buf.dtype:
                    self.copy_student.append(buf)
                    self.copy_teacher.append(tb)

    @torch.no_grad()
    def step(self, decay: float) -> None:
        """teacher <- decay * teacher + (1 - decay) * student; copied tensors are copied.

        A decay of 1.0 leaves the teacher frozen (nothing is averaged or copied).
        """
        if decay >= 1.0:
            return
        if self.avg_teacher:
            student = [p.detach().float() for p in self.avg_student]
            torch._foreach_mul_(self.avg_teacher, decay)
            torch._foreach_add_(self.avg_teacher, student, alpha=1.0 - decay)
        if self.copy_teacher:
            torch._foreach_copy_(self.copy_teacher, [p.detach() for p in self.copy_student])
