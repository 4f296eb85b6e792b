"""Trainer callbacks: the EMA teacher's step, the non-finite guard, the collapse guard and the
metrics files. Each one does one thing at one point of the Trainer's loop."""

from __future__ import annotations

import csv
import json
import logging
import signal
import threading
from pathlib import Path

import torch
from transformers import TrainerCallback

from multissl.config import Recipe
from multissl.core.distributed import all_sum
from multissl.core.health import check_health
from multissl.trainer import PREEMPTION_SIGNALS

log = logging.getLogger(__name__)


class NonFiniteGuard(TrainerCallback):
    """Skips an update whose loss or gradient is not finite; after ``max_nonfinite`` in a row it saves
    a checkpoint (the last healthy weights) and stops with a message naming the step."""

    def __init__(self, trainer, max_nonfinite: int):
        self.trainer, self.max_nonfinite = trainer, max_nonfinite
        self.message: str | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.trainer.decide_update(model, optimizer)

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        if self.message is None and t.nonfinite_streak >= self.max_nonfinite:
            healthy = ", ".join(f"{k}={v:.4g}" for k, v in t.last_healthy.items() if k != "step") or "none"
            self.message = (f"{t.nonfinite_streak} updates in a row had a non-finite loss or gradient, up to step "
                            f"{state.global_step}; last healthy step {t.last_healthy.get('step', 'none')}: {healthy}")
            control.should_save = True
            control.should_training_stop = True


class PreemptionGuard(TrainerCallback):
    """On SIGTERM or SIGUSR1 (what schedulers send before they pre-empt a job) the run finishes the
    update under way, saves a checkpoint and stops; every rank stops at the same step."""

    def __init__(self):
        self.received: str | None = None
        self.message: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in PREEMPTION_SIGNALS}

    def on_step_end(self, args, state, control, **kwargs):
        if all_sum(torch.tensor(float(self.received is not None), device=args.device)) > 0 and self.message is None:
            self.message = f"{self.received or 'a signal on another rank'} at step {state.global_step}"
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


class EMACallback(TrainerCallback):
    """Steps the teacher after each optimiser update that really happened."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.trainer.skip_this_update or getattr(optimizer, "step_was_skipped", False):
            return
        self.trainer.ema_decay = model.ema_step()


class HealthCallback(TrainerCallback):
    """Checks target_var / pred_var at each log; warns, or saves a checkpoint and stops."""

    def __init__(self, recipe: Recipe):
        self.cfg = recipe.health
        self.message: str | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        msg = check_health(state.global_step, logs or {}, self.cfg)
        if msg is None or self.message is not None:
            return
        if self.cfg.action == "warn":
            log.warning("health: %s", msg)
            return
        self.message = msg
        control.should_save = True
        control.should_training_stop = True


class MetricsFileCallback(TrainerCallback):
    """Appends every training log to ``metrics.jsonl`` and ``metrics.csv`` in the run folder."""

    FIELDS = ("step", "epoch", "loss", "learning_rate", "grad_norm", "target_var", "pred_var", "ema_decay",
              "skipped_updates")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        row = {"step": state.global_step, **logs}
        out = Path(args.output_dir)
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        path = out / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
