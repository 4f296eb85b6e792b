"""Pretraining on transformers' Trainer (single process, or DDP / FSDP under torchrun): the EMA
update and the guards are callbacks (``callbacks.py``), checkpoints are sealed and renamed
(``checkpoints.py``), and a JSON-lines / CSV log sits beside TensorBoard's."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import TrainingArguments

from multissl.callbacks import (
    EMACallback,
    HealthCallback,
    MetricsFileCallback,
    NonFiniteGuard,
    PreemptionGuard,
    SnapshotCallback,
)
from multissl.checkpoints import checkpoints, latest_good
from multissl.core.adapter import Modality
from multissl.data.streams import PositionCollator, SeededStream, StreamRecord
from multissl.data.views import ViewCollator, save_views_picture
from multissl.methods import Method, get_method
from multissl.modalities import get_modality
from multissl.recipe import Recipe, RecipeError
from multissl.runs import (
    PREPROCESSOR_DIR,
    RECIPE_FILE,
    check_export,
    load_run,
    migrate_run,
    run_version,
    write_run_info,
)
from multissl.trainer import STREAM_FILE, PretrainTrainer

__all__ = ["PREPROCESSOR_DIR", "build_model", "load_run", "pretrain"]

log = logging.getLogger(__name__)

# Sections that change the model: a checkpoint made under other values cannot be resumed.
MODEL_SECTIONS = ("modality", "encoder", "adapter", "method")
# ... nor under other data, batches or data order: the checkpoint's data position (batches of the
# sampler, rows of a stream) would count other examples, and some would be trained on twice or never.
KEPT_ON_RESUME = (*MODEL_SECTIONS, "train.batch_size", "train.grad_accum", "train.seed", "train.fsdp", "data.path",
                  "data.format", "data.text_column", "data.audio_column", "data.image_column", "data.tokenizer",
                  "data.streaming", "data.shuffle_buffer")
# Where the run lives is not part of it: a run folder may move (to a disk with room, say).
IGNORED_ON_RESUME = ("train.output_dir",)
# A grid of the first examples' views, written when a run of a method that compares views starts.
VIEWS_PICTURE = "views.png"


class CollapseError(RuntimeError):
    """Training stopped because a health metric fell under its threshold."""


class NonFiniteError(RuntimeError):
    """Training stopped after too many non-finite updates in a row."""


class Preempted(RuntimeError):
    """Training stopped on a signal after saving a checkpoint; ``--resume`` continues it."""


def build_model(recipe: Recipe) -> tuple[Modality, Method, Any, Any, Any, Recipe]:
    """(adapter, model, train dataset, collator, preprocessor, completed recipe) for a validated recipe.

    The adapter's config is completed from the data (e.g. token ids from the tokenizer) and from
    ``init_from``; the completed recipe, a new one (``recipe`` is left as it is), is what the run's
    recipe.yaml records.
    """
    modality = get_modality(recipe.modality)(recipe.adapter_config())
    method = get_method(recipe.method.name)
    state = None
    enc = recipe.encoder
    if recipe.init_from:
        if not Path(recipe.init_from).is_dir():
            raise RecipeError(f"init_from: {recipe.init_from}: no such model folder")
        check_export(recipe.init_from)
        enc, state = modality.from_hf(recipe.init_from)
    t = recipe.train
    view = method.student_view(recipe.method)
    views = recipe.views_config() if view.views else None
    dataset, collator, preprocessor = modality.prepare(recipe.data, recipe.mask, t.seed, view, views)
    # the run records every setting it ran with, defaults included
    completed = replace(recipe, encoder=enc, adapter=asdict(modality.cfg), views=asdict(views) if views else {})
    completed.validate()
    torch.manual_seed(t.seed)
    model = method.build(modality, enc, recipe.method, run_steps=t.max_steps)
    if state is not None:
        missing, unexpected = model.encoder.load_state_dict(state, strict=False)
        # a mask embedding is per method (v1 has one, v2 none), not part of the imported encoder
        missing = [k for k in missing if not k.endswith("mask_embedding")]
        unexpected = [k for k in unexpected if not k.endswith("mask_embedding")]
        if missing or unexpected:
            raise RecipeError(f"init_from: {recipe.init_from}: weights do not fit (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
        model.reset_teacher()
    return modality, model, dataset, collator, preprocessor, completed


def training_arguments(recipe: Recipe, output_dir: str) -> TrainingArguments:
    t = recipe.train
    kwargs: dict[str, Any] = {}
    if t.schedule == "warmup_stable_decay":
        kwargs["lr_scheduler_kwargs"] = {"num_decay_steps": t.decay_steps}
    if t.fsdp:
        # FSDP2 shards each parameter on its own, so a teacher tensor and its student tensor are split
        # alike on every rank and the EMA's foreach ops pair local shards
        kwargs["fsdp"] = True
        kwargs["fsdp_config"] = {"version": 2, "transformer_layer_cls_to_wrap": ["Block"],
                                 "reshard_after_forward": t.fsdp == "full_shard"}
    cuda = torch.cuda.is_available()
    if t.precision == "fp16" and not cuda:
        log.warning("train.precision=fp16 on the CPU: accelerate runs it in fp32 (no autocast, no loss scaling); "
                    "bf16 is the CPU's mixed precision")
    return TrainingArguments(
        output_dir=output_dir, max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.lr, adam_beta1=t.betas[0],
        adam_beta2=t.betas[1], adam_epsilon=t.eps, weight_decay=t.weight_decay,
        lr_scheduler_type=t.schedule, warmup_steps=t.warmup_steps, max_grad_norm=t.max_grad_norm,
        bf16=t.precision == "bf16", fp16=t.precision == "fp16", logging_steps=t.logging_steps,
        save_steps=t.save_steps, save_total_limit=t.save_total_limit, seed=t.seed, data_seed=t.seed,
        report_to=t.report_to, remove_unused_columns=False, label_names=[],
        dataloader_num_workers=recipe.data.num_workers, dataloader_drop_last=True,
        dataloader_pin_memory=cuda, use_cpu=not cuda,
        optim="adamw_torch_fused" if cuda and t.fused_adamw else "adamw_torch",
        # every parameter takes part in every loss; streams shard themselves (no batch dispatching)
        ddp_find_unused_parameters=False, accelerator_config={"dispatch_batches": False},
        **kwargs,
    )


def _resume_stream(trainer: PretrainTrainer, stream: SeededStream, start: Path | None) -> None:
    """Track the stream's position; when resuming, continue from the checkpoint's position without
    decoding what came before (else the Trainer replays the stream)."""
    args = trainer.args
    parts = max(args.dataloader_num_workers, 1)
    saved = start / STREAM_FILE.format(args.process_index) if start else None
    record = json.loads(saved.read_text()) if saved and saved.exists() else None
    if record is not None and record.get("parts") != parts:
        log.warning("resume: the stream was read by %s workers per rank, now %d: replaying it", record.get("parts"),
                    parts)
        record = None
    trainer.stream_record = StreamRecord(parts, record)
    dropped = stream.resume(record, args.per_device_train_batch_size) if record else None
    if dropped is not None:
        args.ignore_data_skip = True  # the stream skips by itself
        trainer.drop_first_batches, trainer.rng_after_first_batch = dropped, True
        log.info("resume: the stream continues from %s without replaying it", start.name)
    elif start is not None:
        log.info("resume: replaying the stream up to %s", start.name)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_resumable(run_dir: Path, recipe: Recipe, warn: bool = False) -> None:
    """Refuse a resume whose recipe changes a key of ``KEPT_ON_RESUME``; other changes go on, each
    named in one warning (with ``warn``). A key the saved recipe lacks (an older multissl) is its default."""
    saved_path = run_dir / RECIPE_FILE
    if not saved_path.exists():
        return
    saved, now = _flat(yaml.safe_load(saved_path.read_text()) or {}), _flat(recipe.to_dict())
    changed = []
    for key in sorted(now):
        if key not in saved or key in IGNORED_ON_RESUME:
            continue
        a, b = saved[key], now[key]
        if a == b or (key.startswith("adapter.") and b == -1):  # -1: completed from the data later
            continue
        if any(key == k or key.startswith(k + ".") for k in KEPT_ON_RESUME):
            why = "the model" if key.split(".")[0] in MODEL_SECTIONS else "what the checkpoint's data position counts"
            raise RecipeError(f"--resume: {saved_path} was made with {key}={a!r}, this recipe has {b!r} (it changes "
                              f"{why}); start a new run or keep the value")
        changed.append(f"{key} {a!r} -> {b!r}")
    if changed and warn:
        log.warning("--resume: continuing %s with changed settings: %s", run_dir, "; ".join(changed))


def pretrain(recipe: Recipe, resume: bool = False, overwrite: bool = False, callbacks: list | None = None) -> Path:
    """Pretrain as the recipe says; returns the run folder (final weights, recipe, preprocessor, logs).
    Under torchrun every rank calls it; only the main rank writes files.

    >>> pretrain(load_recipe("recipes/text/tiny.yaml", ["--data", "corpus/", "--tokenizer", "tok/",
    ...                                                   "--output_dir", "runs/t1"]))  # doctest: +SKIP
    """
    if not recipe.train.output_dir:
        raise RecipeError("train.output_dir is empty: pass --output_dir RUN_DIR")
    run_dir = Path(recipe.train.output_dir)
    if resume:
        if not run_dir.is_dir() or not checkpoints(run_dir):
            raise RecipeError(f"--resume: no checkpoint-* folder in {run_dir}")
        run_version(run_dir)  # a newer multissl's run is refused before anything is read
        _check_resumable(run_dir, recipe)
    elif run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RecipeError(f"train.output_dir: {run_dir} exists and is not empty "
                          "(pass --resume to continue it or --overwrite to replace it)")
    args = training_arguments(recipe, str(run_dir))  # under torchrun this joins the process group
    if recipe.train.fsdp and not (torch.cuda.is_available() and args.world_size > 1):
        raise RecipeError(f"train.fsdp={recipe.train.fsdp!r} needs a torchrun job on several CUDA GPUs (accelerate "
                          f"shards only there); this job has {args.world_size} process(es) on "
                          f"{'CUDA' if torch.cuda.is_available() else 'the CPU'}. Leave train.fsdp empty for DDP.")
    main = args.should_save
    modality, model, dataset, collator, preprocessor, recipe = build_model(recipe)
    start = None
    # every rank, on every node, waits for the main rank to set the run folder up (the default,
    # local=True, makes only the ranks of the main rank's own node wait)
    with args.main_process_first(local=False, desc="run folder"):
        if resume:
            _check_resumable(run_dir, recipe, warn=main)  # again, with the adapter completed from the data
            start = latest_good(run_dir, set_aside=main)
            if start is None:
                raise RecipeError(f"--resume: no usable checkpoint in {run_dir} (see the warnings above)")
            if main:
                migrate_run(run_dir)
        elif main:
            if run_dir.exists() and overwrite:
                shutil.rmtree(run_dir)  # only once the new run is known to start
            run_dir.mkdir(parents=True, exist_ok=True)
            recipe.save(run_dir / RECIPE_FILE)
            write_run_info(run_dir)
            if preprocessor is not None:
                preprocessor.save_pretrained(run_dir / PREPROCESSOR_DIR)
    if recipe.train.compile:
        model.compile_blocks()
    streamed = isinstance(dataset, SeededStream)
    if streamed:
        collator = PositionCollator(collator)
    trainer = PretrainTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    if streamed:
        _resume_stream(trainer, dataset, start)
    guards = [NonFiniteGuard(trainer, recipe.train.max_nonfinite), HealthCallback(recipe), PreemptionGuard()]
    extra = [EMACallback(trainer)] if model.teacher is not None else []
    if main and not resume and not streamed and isinstance(collator, ViewCollator):  # augmentations are checked by eye
        save_views_picture(collator.maker, collator([dataset[i] for i in range(min(8, len(dataset)))]),
                           run_dir / VIEWS_PICTURE)
    if type(model).snapshot is not Method.snapshot and not streamed:  # the objective draws its progress
        extra.append(SnapshotCallback(collator([dataset[i] for i in range(min(8, len(dataset)))])))
    for cb in [*guards, *extra, MetricsFileCallback(), *(callbacks or [])]:
        trainer.add_callback(cb)
    trainer.train(resume_from_checkpoint=str(start) if start else None)
    nonfinite, health, preemption = guards
    if preemption.message:  # no final weights: the run is not finished
        raise Preempted(f"stopped by {preemption.message}; checkpoint-{trainer.state.global_step} saved in "
                        f"{run_dir}; continue with --resume")
    trainer.save_final(run_dir)
    if nonfinite.message:
        raise NonFiniteError(f"{nonfinite.message}; checkpoint saved in {run_dir}. Lower train.lr or set "
                             "train.max_grad_norm.")
    if health.message:
        raise CollapseError(f"{health.message}; checkpoint saved in {run_dir}. Lower train.lr, raise "
                            "method.ema.decay, or set health.action=warn to continue anyway.")
    return run_dir
