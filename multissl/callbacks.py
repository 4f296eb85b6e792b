"""Trainer callbacks: the EMA teacher's step, the non-finite guard, the collapse guard and the
metrics files. Each one does one thing at one point of the Trainer's loop."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import threading
from pathlib import Path

import torch
from transformers import TrainerCallback

from multissl.core.distributed import all_sum
from multissl.core.health import check_health
from multissl.recipe import Recipe
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
    """Steps the teacher after each optimiser update that really happened, with the decay its
    schedule gives the optimiser step (the learning rate's position too); at the end of the run it
    warns when more than ``max_init_share`` of the teacher is still its initial value."""

    def __init__(self, trainer, max_init_share: float = 0.1):
        self.trainer, self.max_init_share = trainer, max_init_share

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.trainer.skip_this_update or getattr(optimizer, "step_was_skipped", False):
            return
        self.trainer.ema_decay = model.ema_step(state.global_step - 1)
        self.trainer.teacher_init_share = float(model.teacher_init_share)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        share = float(model.teacher_init_share) if model is not None else 0.0
        if share > self.max_init_share:
            log.warning("ema: %.0f%% of the teacher is still its initial value after %d steps; the EMA "
                        "schedule is too slow for this run (set method.ema.max_init_share, e.g. 0.05, or "
                        "lower method.ema.decay / end_decay)", 100 * share, state.global_step)


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


class SnapshotCallback(TrainerCallback):
    """At each checkpoint, lets the objective write what shows its progress (``Method.snapshot``, e.g.
    MAE's reconstruction grid) into the run folder, from the same few training samples each time."""

    def __init__(self, batch: dict):
        self.batch = batch

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None:
            was_training = model.training
            with torch.no_grad():
                model.eval().snapshot(self.batch, Path(args.output_dir), state.global_step)
            model.train(was_training)


class MetricsFileCallback(TrainerCallback):
    """Appends every training log to ``metrics.jsonl`` and ``metrics.csv`` in the run folder. On a
    resume, rows logged after the checkpoint it resumes from (by the run that stopped) are dropped
    first, so that each step has one row."""

    FIELDS = ("step", "epoch", "loss", "learning_rate", "grad_norm", "target_var", "pred_var", "student_rank",
              "teacher_rank", "target_pos_share", "ema_decay", "teacher_init_share", "skipped_updates")

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        out = Path(args.output_dir)
        jsonl = out / "metrics.jsonl"
        if not jsonl.exists():
            return
        rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if r.get("step", 0) <= state.global_step]
        if len(kept) == len(rows):
            return
        for path, text in ((jsonl, "".join(json.dumps(r) + "\n" for r in kept)), (out / "metrics.csv", _csv(kept))):
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)

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


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MetricsFileCallback.FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
