"""transformers' Trainer, taught what pretraining needs: an update whose loss or gradient is not
finite is skipped (and counted) instead of poisoning the weights; checkpoints are staged, sealed and
renamed so a crash or a full disk never leaves a half-written one; streamed datasets that shard
themselves across ranks are not sharded a second time, and their position goes into checkpoints."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import Trainer

from multissl.checkpoints import SAVE_ERRORS, publish, rotate, save_failed, seal
from multissl.core.distributed import all_sum
from multissl.data.streams import StreamRecord
from multissl.runs import RECIPE_FILE

log = logging.getLogger(__name__)

STREAM_FILE = "stream_rank{}.json"


PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _worker_init(previous: Any, worker_id: int) -> None:
    # Schedulers signal every process of a job; the main process saves and stops, then ends its
    # DataLoader workers itself, so a worker must not die of the signal first.
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if previous is not None:
        previous(worker_id)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class PretrainTrainer(Trainer):
    """Trainer for a :class:`~multissl.methods.Method`: logs its health metrics, skips
    non-finite updates and writes checkpoints atomically.

    ``skipped_updates`` counts skipped updates; ``nonfinite_streak`` the current run of them;
    ``last_healthy`` holds the step and metrics of the last finite forward.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._sums: dict[str, float] = {}
        self._count = 0
        self._staging: str | None = None
        self._nonfinite_in_update = False
        self.skip_this_update = False
        self.skipped_updates = 0
        self.nonfinite_streak = 0
        self.last_healthy: dict[str, float] = {}
        self.ema_decay = float("nan")
        self.teacher_init_share = 1.0
        self.stream_record: StreamRecord | None = None
        self.drop_first_batches = 0
        self.rng_after_first_batch = False
        self._pending_rng: str | None = None

    # --- the step ------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        position = inputs.pop("stream_position", None)
        if position is not None and self.stream_record is not None:
            self.stream_record.add(position)
        out = model(**inputs)
        loss = out["loss"]
        # every rank must agree, or DDP's gradient all-reduce would hang
        if all_sum((~torch.isfinite(loss.detach())).float()) > 0:
            self._nonfinite_in_update = True
            params = [p for p in model.parameters() if p.requires_grad]
            # gradients that still reach every parameter, so DDP's reducer completes: zeros, or NaN under
            # fp16's GradScaler, which then skips the step itself (with no gradient it would find no
            # inf check and fail)
            poison = float("nan") if getattr(self.accelerator, "scaler", None) is not None else 0.0
            loss = torch.stack([p.reshape(-1)[0] for p in params]).sum() * poison
        else:
            metrics = {k: float(v.detach()) for k, v in out.items()}
            for key, value in metrics.items():
                if key != "loss":
                    self._sums[key] = self._sums.get(key, 0.0) + value
            self._count += 1
            self.last_healthy = {"step": self.state.global_step + 1, **metrics}
        return (loss, out) if return_outputs else loss

    def decide_update(self, model: torch.nn.Module, optimizer: Any) -> None:
        """Before the optimiser steps: drop the whole update, on every rank alike, when a forward of it
        was not finite or its gradient is not. Under fp16's GradScaler (CUDA only) the scaler finds
        the non-finite gradient and skips the step itself."""
        scaler = getattr(self.accelerator, "scaler", None)
        bad = self._nonfinite_in_update  # compute_loss took it from every rank's loss
        if not bad and scaler is None:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            local = bool(grads) and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum()))
            # under FSDP each rank holds only its shard of the gradient: the NaN may be in one shard
            bad = bool(all_sum(torch.tensor(float(local), device=self.args.device)) > 0)
        self._nonfinite_in_update = False
        self.skip_this_update = bad
        if bad:
            if scaler is None:
                optimizer.zero_grad(set_to_none=True)  # AdamW leaves parameters without a gradient alone
            self.skipped_updates += 1
            self.nonfinite_streak += 1
            log.warning("step %d: non-finite loss or gradient, update skipped (%d so far)",
                        self.state.global_step + 1, self.skipped_updates)
        else:
            self.nonfinite_streak = 0

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            if self._count:
                logs.update({k: round(v / self._count, 5) for k, v in self._sums.items()})
            if getattr(self.model, "teacher", None) is not None:  # objectives without a teacher log neither
                logs["ema_decay"] = self.ema_decay
                logs["teacher_init_share"] = round(self.teacher_init_share, 5)
            logs["skipped_updates"] = self.skipped_updates
            self._sums, self._count = {}, 0
        super().log(logs, start_time)

    # --- data ----------------------------------------------------------------------------------

    def _load_rng_state(self, checkpoint: str | None) -> None:
        # Creating the DataLoader's iterator draws from the RNG; the checkpoint's state must be
        # restored after that, as the Trainer does when it replays batches.
        if self.rng_after_first_batch:
            self._pending_rng = checkpoint
            return
        super()._load_rng_state(checkpoint)

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> Any:
        batches = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self._pending_rng is not None:
            self.rng_after_first_batch = False
            super()._load_rng_state(self._pending_rng)
            self._pending_rng = None
        return batches

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        # Datasets that declare ``lengths`` (audio) are batched by similar length to save padding.
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = getattr(dataset, "lengths", None)
        if lengths is None:
            return super()._get_train_sampler(train_dataset)
        from transformers.trainer_pt_utils import LengthGroupedSampler

        return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                    lengths=lengths)

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        # accelerate's DataLoaderShard.set_epoch skips the dataset when the batch sampler is sharded
        # (several ranks), so map-style datasets would draw epoch 0's masks and crops every epoch
        epoch = kwargs["epoch"] if "epoch" in kwargs else args[1]
        if hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(epoch)
        return super()._run_epoch(*args, **kwargs)

    def get_train_dataloader(self) -> Any:
        loader = super().get_train_dataloader()
        shard = getattr(loader, "dataset", None)
        if getattr(self.train_dataset, "shards_itself", False) and hasattr(shard, "num_processes"):
            shard.num_processes, shard.process_index = 1, 0  # accelerate's re-sharding becomes a pass-through
        base = getattr(loader, "base_dataloader", loader)  # accelerate's loaders wrap a plain DataLoader
        base.worker_init_fn = partial(_worker_init, base.worker_init_fn)
        if self.drop_first_batches:
            from accelerate import skip_first_batches

            loader = skip_first_batches(loader, self.drop_first_batches)
        return loader

    # --- checkpoints ---------------------------------------------------------------------------

    def _get_output_dir(self, trial: Any) -> str:
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run_dir = Path(self.args.output_dir)
        name = f"checkpoint-{self.state.global_step}"
        staging = run_dir / f".staging-{name}"
        main = self.args.should_save
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        _barrier()
        self._staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)
            if self.stream_record is not None:
                path = staging / name / STREAM_FILE.format(self.args.process_index)
                path.write_text(json.dumps(self.stream_record.to_dict()))
            _barrier()  # every rank's RNG state and stream position is in
            if main:
                shutil.copy(run_dir / RECIPE_FILE, staging / name / RECIPE_FILE)
                seal(staging / name)
                publish(staging / name, run_dir / name)
        except SAVE_ERRORS as e:
            raise save_failed(run_dir, name, e, staging if main else None) from e
        finally:
            self._staging = None
        if main:
            shutil.rmtree(staging, ignore_errors=True)
            rotate(run_dir, self.args.save_total_limit or 0)
        _barrier()

    def save_final(self, run_dir: Path) -> None:
        """The final weights in ``run_dir``: staged, then each file renamed (on the main rank)."""
        staging = run_dir / ".final"
        try:
            self.save_model(str(staging))
        except SAVE_ERRORS as e:
            raise save_failed(run_dir, staging.name, e, staging if self.args.should_save else None) from e
        if self.args.should_save:
            for f in staging.iterdir():
                os.replace(f, run_dir / f.name)
            staging.rmdir()
        _barrier()
