"""The EMA teacher: an exponential moving average of the student's parameters.

The teacher's parameters are the fp32 shadow weights themselves (they never receive gradients and
stay fp32 under autocast). A model *declares* what the teacher tracks: pairs of (student, teacher)
modules; inside them, parameter names that start with a ``copied`` prefix are copied each step
instead of averaged. Parts the teacher does not hold are shared with the student and cost nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EMAConfig:
    """Teacher decay schedule: linear from ``decay`` to ``end_decay`` over ``anneal_steps`` updates."""

    decay: float = 0.999
    """Decay at the first update."""

    end_decay: float = 0.9999
    """Decay once ``anneal_steps`` updates are done; 1.0 freezes the teacher from then on."""

    anneal_steps: int = 30000
    """Number of optimiser updates over which the decay rises linearly."""

    def validate(self, where: str = "method.ema") -> None:
        for key in ("decay", "end_decay"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{where}.{key} must be in [0, 1], got {value}")
        if self.anneal_steps < 0:
            raise ValueError(f"{where}.anneal_steps must be >= 0, got {self.anneal_steps}")


def annealed_decay(step: int, cfg: EMAConfig) -> float:
    """The decay for update number ``step`` (0-based).

    >>> annealed_decay(0, EMAConfig(0.9, 1.0, 10)), annealed_decay(5, EMAConfig(0.9, 1.0, 10))
    (0.9, 0.95)
    """
    if step >= cfg.anneal_steps:
        return cfg.end_decay
    frac = 1.0 - step / cfg.anneal_steps
    return cfg.end_decay - (cfg.end_decay - cfg.decay) * frac


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
