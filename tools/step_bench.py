"""The harness the step-time benchmarks share: a training step per row (loss, backward, AdamW, EMA
where the row has a teacher), rounds that interleave the rows so machine noise hits them alike, and
a table of medians with the targets checked against the student alone and data2vec v1."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def training_step(loss_fn: Callable[[int], torch.Tensor], model: torch.nn.Module, views: int,
                  ema: bool = False) -> Callable[[int], int]:
    """A function that runs one full training step on batch ``i`` and returns the views it trained."""
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)

    def run(i: int) -> int:
        loss_fn(i).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema:
            model.ema_step()
        return views
    return run


def run_rounds(rows: dict[str, Callable[[int], int]], rounds: int, warmup: int = 2
               ) -> tuple[dict[str, float], dict[str, int]]:
    """(median seconds per step, views per step) of each row over ``rounds`` timed rounds."""
    times: dict[str, list[float]] = {k: [] for k in rows}
    views: dict[str, int] = {}
    for r in range(rounds + warmup):
        for name, fn in rows.items():
            t = time.perf_counter()
            views[name] = fn(r)
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}, views


def report(medians: dict[str, float], views: dict[str, int], batch: int, v2_row: str, v2_target: float,
           unit: tuple[str, float] = ("", 0.0)) -> None:
    """Print the table (``unit``: an extra throughput column, its name and amount per sample) and the
    two targets: v1 step <= 1.45x the student's, v2 masked views/s >= ``v2_target`` x v1's."""
    base = medians["student alone (fwd+bwd)"]
    v1_views = batch / medians["multissl data2vec v1"]
    extra = f" {unit[0]:>10}" if unit[0] else ""
    print(f"{'row':<40} {'ms/step':>9} {'x student':>10}{extra} {'views/s':>9} {'x v1 views/s':>13}")
    for name, med in medians.items():
        vps = views[name] / med
        col = f" {batch * unit[1] / med:>10.2f}" if unit[0] else ""
        print(f"{name:<40} {med * 1e3:>9.1f} {med / base:>10.2f}{col} {vps:>9.1f} {vps / v1_views:>13.2f}")
    v1_ratio = medians["multissl data2vec v1"] / base
    v2_gain = (views[v2_row] / medians[v2_row]) / v1_views
    print(f"target: v1 step <= 1.45x student: {v1_ratio:.2f}x ({'met' if v1_ratio <= 1.45 else 'missed'})")
    print(f"target: v2 masked views/s >= {v2_target:g}x v1: {v2_gain:.2f}x "
          f"({'met' if v2_gain >= v2_target else 'missed'})")
