"""Health metrics that catch representation collapse before the loss shows it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from multissl.core.distributed import all_sum


@dataclass
class HealthConfig:
    """Collapse guards on the per-dimension spread of targets and predictions."""

    min_target_var: float = 0.1
    """Alarm when ``target_var`` (mean per-dimension std of the teacher targets) falls below this."""

    min_pred_var: float = 0.01
    """Alarm when ``pred_var`` (the same for the student's predictions) falls below this."""

    check_after: int = 5000
    """No alarm before this many optimiser updates (early training is allowed to wander)."""

    action: Literal["warn", "stop"] = "stop"
    """warn: log a warning and go on; stop: save a checkpoint and stop with a message."""

    def validate(self, where: str = "health") -> None:
        if self.check_after < 0:
            raise ValueError(f"{where}.check_after must be >= 0, got {self.check_after}")


def compute_var(x: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the standard deviation over rows; ``x`` is (N, D). Under data
    parallelism the rows of every rank count (one all-reduce of counts, sums and squares).

    >>> float(compute_var(torch.zeros(4, 3))) < 0.01
    True
    """
    x = x.detach().double().reshape(-1, x.shape[-1])
    stats = all_sum(torch.stack([x.new_full((x.shape[-1],), x.shape[0]), x.sum(0), (x * x).sum(0)]))
    n, total, squares = stats
    if n[0] < 2:
        return torch.zeros((), device=x.device)
    var = ((squares - total * total / n) / (n - 1)).clamp_min(0)
    return torch.sqrt(var + 1e-6).mean().float()


def check_health(step: int, metrics: dict[str, float], cfg: HealthConfig) -> str | None:
    """A message naming what collapsed, or None when healthy (or still warming up).

    >>> check_health(10, {"target_var": 0.01, "pred_var": 0.5}, HealthConfig(check_after=5))
    'target_var 0.0100 < min_target_var 0.1 at step 10: the teacher targets collapsed'
    """
    if step < cfg.check_after:
        return None
    tv, pv = metrics.get("target_var"), metrics.get("pred_var")
    if tv is not None and tv < cfg.min_target_var:
        return (
            f"target_var {tv:.4f} < min_target_var {cfg.min_target_var} at step {step}: "
            "the teacher targets collapsed"
        )
    if pv is not None and pv < cfg.min_pred_var:
        return (
            f"pred_var {pv:.4f} < min_pred_var {cfg.min_pred_var} at step {step}: "
            "the student's predictions collapsed"
        )
    return None
