"""Pretraining on transformers' Trainer: the EMA update and the health guard are callbacks, the
checkpoints are written to a staging folder and renamed, and a JSON-lines / CSV log sits beside
TensorBoard's."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint, rotate_checkpoints

from multissl.config import Recipe, RecipeError, from_dict
from multissl.core.data2vec import Data2Vec
from multissl.core.health import check_health
from multissl.modalities import get_modality
from multissl.modalities.base import Modality

log = logging.getLogger(__name__)

RECIPE_FILE = "recipe.yaml"
PREPROCESSOR_DIR = "preprocessor"
# Sections that change the model: a checkpoint made under other values cannot be resumed.
MODEL_SECTIONS = ("modality", "encoder", "adapter", "method")


class CollapseError(RuntimeError):
    """Training stopped because a health metric fell under its threshold."""


def build_model(recipe: Recipe) -> tuple[Modality, Data2Vec, Any, Any, Any]:
    """(adapter, model, train dataset, collator, preprocessor) for a validated recipe.

    The adapter's config is completed from the data (e.g. token ids from the tokenizer) and from
    ``init_from``; the completed values are what the run's recipe.yaml records.
    """
    modality = get_modality(recipe.modality)(recipe.adapter_config())
    state = None
    enc = recipe.encoder
    if recipe.init_from:
        if not Path(recipe.init_from).is_dir():
            raise RecipeError(f"init_from: {recipe.init_from}: no such model folder")
        enc, state = modality.from_hf(recipe.init_from)
        recipe.encoder = enc
    dataset, collator, preprocessor = modality.prepare(recipe)
    recipe.adapter = asdict(modality.cfg)
    recipe.validate()
    torch.manual_seed(recipe.train.seed)
    model = Data2Vec(modality, enc, recipe.method)
    if state is not None:
        missing, unexpected = model.encoder.load_state_dict(state, strict=False)
        # a mask embedding is per method (v1 has one, v2 none), not part of the imported encoder
        missing = [k for k in missing if not k.endswith("mask_embedding")]
        unexpected = [k for k in unexpected if not k.endswith("mask_embedding")]
        if missing or unexpected:
            raise RecipeError(f"init_from: {recipe.init_from}: weights do not fit (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
        model.reset_teacher()
    return modality, model, dataset, collator, preprocessor


def training_arguments(recipe: Recipe, output_dir: str) -> TrainingArguments:
    t = recipe.train
    kwargs: dict[str, Any] = {}
    if t.schedule == "warmup_stable_decay":
        kwargs["lr_scheduler_kwargs"] = {"num_decay_steps": t.decay_steps}
    return TrainingArguments(
        output_dir=output_dir, max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.lr, adam_beta1=t.betas[0],
        adam_beta2=t.betas[1], adam_epsilon=t.eps, weight_decay=t.weight_decay,
        lr_scheduler_type=t.schedule, warmup_steps=t.warmup_steps, max_grad_norm=t.max_grad_norm,
        bf16=t.precision == "bf16", fp16=t.precision == "fp16", logging_steps=t.logging_steps,
        save_steps=t.save_steps, save_total_limit=t.save_total_limit, seed=t.seed, data_seed=t.seed,
        report_to=t.report_to, remove_unused_columns=False, label_names=[],
        dataloader_num_workers=recipe.data.num_workers, dataloader_drop_last=True,
        dataloader_pin_memory=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(),
        **kwargs,
    )


class Data2VecTrainer(Trainer):
    """Trainer that logs the model's health metrics and writes checkpoints atomically."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._sums: dict[str, float] = {}
        self._count = 0
        self._staging: str | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(**inputs)
        for key, value in out.items():
            if key != "loss":
                self._sums[key] = self._sums.get(key, 0.0) + float(value.detach())
        self._count += 1
        return (out["loss"], out) if return_outputs else out["loss"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._count:
            logs.update({k: round(v / self._count, 5) for k, v in self._sums.items()})
            logs["ema_decay"] = getattr(self, "ema_decay", float("nan"))
            self._sums, self._count = {}, 0
        super().log(logs, start_time)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        # Datasets that declare ``lengths`` (audio) are batched by similar length to save padding.
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = getattr(dataset, "lengths", None)
        if lengths is None:
            return super()._get_train_sampler(train_dataset)
        from transformers.trainer_pt_utils import LengthGroupedSampler

        return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                    lengths=lengths)

    def _get_output_dir(self, trial: Any) -> str:
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run_dir = self.args.output_dir
        name = f"checkpoint-{self.state.global_step}"
        self._staging = os.path.join(run_dir, ".staging")
        shutil.rmtree(self._staging, ignore_errors=True)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            staging, self._staging = self._staging, None
        if self.args.should_save:
            shutil.copy(os.path.join(run_dir, RECIPE_FILE), os.path.join(staging, name, RECIPE_FILE))
            final = os.path.join(run_dir, name)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(run_dir, self.args.save_total_limit)


class EMACallback(TrainerCallback):
    """Steps the teacher after each optimiser update that really happened."""

    def __init__(self, trainer: Data2VecTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if getattr(optimizer, "step_was_skipped", False):
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

    FIELDS = ("step", "epoch", "loss", "learning_rate", "grad_norm", "target_var", "pred_var", "ema_decay")

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


def _check_resumable(run_dir: Path, recipe: Recipe) -> None:
    saved_path = run_dir / RECIPE_FILE
    if not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text())
    now = recipe.to_dict()
    for section in MODEL_SECTIONS:
        a, b = saved.get(section), now.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if key in b and a.get(key) != b.get(key) and not (section == "adapter" and b[key] == -1):
                    raise RecipeError(f"--resume: {saved_path} was made with {section}.{key}={a.get(key)!r}, "
                                      f"this recipe has {b.get(key)!r}")
        elif a != b:
            raise RecipeError(f"--resume: {saved_path} was made with {section}={a!r}, this recipe has {b!r}")


def pretrain(recipe: Recipe, resume: bool = False, overwrite: bool = False, callbacks: list | None = None) -> Path:
    """Pretrain as the recipe says; returns the run folder (final weights, recipe, preprocessor, logs).

    >>> pretrain(load_recipe("recipes/text/tiny.yaml", ["--data", "corpus/", "--tokenizer", "tok/",
    ...                                                   "--output_dir", "runs/t1"]))  # doctest: +SKIP
    """
    if not recipe.train.output_dir:
        raise RecipeError("train.output_dir is empty: pass --output_dir RUN_DIR")
    run_dir = Path(recipe.train.output_dir)
    if resume:
        if not run_dir.is_dir() or get_last_checkpoint(str(run_dir)) is None:
            raise RecipeError(f"--resume: no checkpoint-* folder in {run_dir}")
        _check_resumable(run_dir, recipe)
    elif run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RecipeError(f"train.output_dir: {run_dir} exists and is not empty "
                          "(pass --resume to continue it or --overwrite to replace it)")
    modality, model, dataset, collator, preprocessor = build_model(recipe)
    if resume:
        _check_resumable(run_dir, recipe)  # again, now that the data completed the adapter's settings
    elif run_dir.exists() and overwrite:
        shutil.rmtree(run_dir)  # only once the new run is known to start
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe.save(run_dir / RECIPE_FILE)
    if preprocessor is not None:
        preprocessor.save_pretrained(run_dir / PREPROCESSOR_DIR)
    trainer = Data2VecTrainer(model=model, args=training_arguments(recipe, str(run_dir)),
                              train_dataset=dataset, data_collator=collator)
    health = HealthCallback(recipe)
    for cb in [EMACallback(trainer), health, MetricsFileCallback(), *(callbacks or [])]:
        trainer.add_callback(cb)
    trainer.train(resume_from_checkpoint=True if resume else None)
    staging = run_dir / ".final"
    trainer.save_model(str(staging))
    for f in staging.iterdir():  # each file lands whole or not at all
        os.replace(f, run_dir / f.name)
    staging.rmdir()
    if health.message:
        raise CollapseError(f"{health.message}; checkpoint saved in {run_dir}. Lower train.lr, raise "
                            "method.ema.decay, or set health.action=warn to continue anyway.")
    return run_dir


def load_run(run_dir: str | Path, which: str = "student") -> tuple[Recipe, Modality, torch.nn.Module]:
    """(recipe, adapter, encoder) from a run folder: final weights, or the newest checkpoint."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    recipe_path = run_dir / RECIPE_FILE
    if not recipe_path.exists():
        raise FileNotFoundError(f"{run_dir}: not a multissl run folder (no {RECIPE_FILE})")
    recipe = from_dict(Recipe, yaml.safe_load(recipe_path.read_text()))
    weights = run_dir / "model.safetensors"
    if not weights.exists():
        last = get_last_checkpoint(str(run_dir))
        if last is None:
            raise FileNotFoundError(f"{run_dir}: no model.safetensors and no checkpoint-* folder")
        weights = Path(last) / "model.safetensors"
    modality = get_modality(recipe.modality)(recipe.adapter_config())
    model = Data2Vec(modality, recipe.encoder, recipe.method)
    model.load_state_dict(load_file(str(weights)))
    if which not in ("student", "teacher"):
        raise ValueError(f"--which must be student or teacher, got {which!r}")
    encoder = model.encoder if which == "student" else model.teacher_encoder()
    return recipe, modality, encoder.eval()
