"""Health metrics that catch representation collapse before the loss shows it, and say what the
targets are made of: the per-dimension spread of targets and predictions, the effective rank of
pooled representations (RankMe), and the share of the targets' variance that the position alone
explains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from multissl.core.distributed import all_gather_rows, all_sum


@dataclass
class HealthConfig:
    """Collapse guards on the per-dimension spread of targets and predictions."""

    min_target_var: float = 0.1
    """Alarm when ``target_var`` (mean per-dimension std of the teacher targets) falls below this."""

    min_pred_var: float = 0.01
    """Alarm when ``pred_var`` (the same for the student's predictions) falls below this."""

    min_rank: float = 0.0
    """Alarm when the effective rank (RankMe) of the student's or the teacher's pooled representations
    over a batch (``student_rank``, ``teacher_rank``) falls below this; 0 disables it. A collapsed
    encoder maps every input to about the same vector, a rank near 1."""

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
    for key in ("student_rank", "teacher_rank"):
        rank = metrics.get(key)
        if rank is not None and rank < cfg.min_rank:
            who = "student" if key == "student_rank" else "teacher"
            return (f"{key} {rank:.2f} < min_rank {cfg.min_rank} at step {step}: the {who}'s representations "
                    "collapsed")
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


def effective_rank(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """RankMe (Garrido et al. 2023, "RankMe: Assessing the downstream performance of pretrained
    self-supervised representations by their rank"): exp of the entropy of the normalised singular
    values of the (N, D) matrix ``x``, taken over the rows of every rank. It lies in [1, min(N, D)];
    a matrix with k equal non-zero singular values has rank k.

    >>> float(effective_rank(torch.eye(4)[:, :3] @ torch.eye(3)))  # doctest: +ELLIPSIS
    3.0...
    """
    x = all_gather_rows(x.detach().float().reshape(-1, x.shape[-1]))
    if x.shape[0] < 2:
        return torch.ones((), device=x.device)
    if not bool(torch.isfinite(x).all()):  # a non-finite forward (it is skipped): no rank to report
        return torch.full((), float("nan"), device=x.device)
    s = torch.linalg.svdvals(x.double())
    p = s / s.sum().clamp_min(eps) + eps
    return torch.exp(-(p * p.log()).sum()).float()


def position_share(y: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The share of the variance of targets ``y`` (B, T, D) that the position alone explains: the
    adjusted R-squared of predicting each target from its position's mean over the batch (padding,
    True in ``padding_mask``, left out; positions seen once carry no information and are left out).
    0: position tells nothing; 1: every sample has the same target at a position.

    >>> y = torch.randn(64, 8, 4)
    >>> abs(float(position_share(y))) < 0.05, float(position_share(y[:1].expand(64, -1, -1) + 0.0)) > 0.99
    (True, True)
    """
    y = y.detach().double()
    valid = torch.ones(y.shape[:2], dtype=torch.bool, device=y.device) if padding_mask is None else ~padding_mask
    w = valid.unsqueeze(-1).double()
    # per position: count, sum, sum of squares; summed over ranks
    stats = all_sum(torch.stack([w.sum(0).expand(-1, y.shape[-1]), (y * w).sum(0), (y * y * w).sum(0)]))
    n_pos, total, squares = stats
    seen = n_pos[:, 0] > 1
    n_pos, total, squares = n_pos[seen], total[seen], squares[seen]
    n, positions = n_pos[:, 0].sum(), int(seen.sum())
    if positions < 2 or n <= positions + 1:
        return torch.zeros((), device=y.device)
    grand = total.sum(0) / n
    ss_total = (squares.sum(0) - n * grand * grand).sum()
    ss_within = (squares - total * total / n_pos).sum()
    adjusted = 1.0 - (ss_within / (n - positions)) / (ss_total / (n - 1)).clamp_min(1e-12)
    return adjusted.float()
