"""Run ``multissl pretrain`` in a child process (one rank of a torchrun job, or alone) for the
distributed and kill tests. With ``DUMP`` set, each rank writes its weights to ``$DUMP/rank{r}.pt``
at the end; with ``SEEN`` set, each forward appends the update number and a hash of every input row
and of its masks to ``$SEEN.rank{r}`` (to count what was trained on, and how it was masked); ``SLOW``
adds that many seconds per forward; ``POISON=rank:update`` makes that rank's forward of that update
(1-based) produce NaN; with ``SETUP`` set, ranks log when they look for the checkpoint to resume from;
``STEP_SLEEP`` adds that many seconds after each update, whatever the objective."""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from multissl.methods.data2vec import Data2Vec
from multissl.recipe import load_recipe
from multissl.train import pretrain

ROOT = Path(__file__).resolve().parents[1]


def spawn(recipe: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """This driver in a child process (stdout dropped, stderr kept)."""
    return subprocess.Popen([sys.executable, __file__, str(recipe), *args],
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_update(seen: Path, update: int, timeout: float = 300) -> None:
    """Block until the child logging to ``seen`` has started forward number ``update`` (0-based)."""
    log, deadline = Path(f"{seen}.rank0"), time.time() + timeout
    while time.time() < deadline:
        if log.exists() and any(json.loads(x)["update"] >= update for x in log.read_text().splitlines()):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{log}: update {update} did not start")


class DumpWeights(TrainerCallback):
    """Full tensors, plus under FSDP the shape of each rank's own shard (key ``shard:NAME``)."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        from torch.distributed.tensor import DTensor

        weights = {}
        for k, v in model.state_dict().items():
            if isinstance(v, DTensor):
                weights[f"shard:{k}"] = torch.tensor(v.to_local().shape)
                v = v.full_tensor()
            weights[k] = v.detach().clone()
        torch.save(weights, os.path.join(os.environ["DUMP"], f"rank{args.process_index}.pt"))


def record_inputs(path: str, slow: float) -> None:
    forward = Data2Vec.forward

    def logged(self, inputs, mask, student_inputs=None, **kwargs):
        rows = next(iter(inputs.values()))
        masks = mask.reshape(len(rows), -1)  # an example's clones are consecutive rows
        line = {"update": int(self.ema_updates), "rows": [hash(tuple(r.flatten().tolist())) for r in rows],
                "masks": [hash(tuple(m.tolist())) for m in masks]}
        with open(f"{path}.rank{os.environ.get('RANK', '0')}", "a") as fh:
            fh.write(json.dumps(line) + "\n")
        time.sleep(slow)
        return forward(self, inputs, mask, student_inputs, **kwargs)

    Data2Vec.forward = logged


def record_resume_setup(path: str, slow: float) -> None:
    """Each rank appends when it looked for the checkpoint to resume from (start, end) to ``path.rank{r}``;
    rank 0 takes ``slow`` seconds longer, as a main rank setting a damaged checkpoint aside would."""
    import multissl.train

    find = multissl.train.latest_good

    def timed(run_dir, set_aside=True):
        rank, start = os.environ.get("RANK", "0"), time.time()
        if rank == "0":
            time.sleep(slow)
        found = find(run_dir, set_aside)
        with open(f"{path}.rank{rank}", "a") as fh:
            fh.write(json.dumps({"start": start, "end": time.time()}) + "\n")
        return found

    multissl.train.latest_good = timed


class StopAt(TrainerCallback):
    """Stops training politely after the given update."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class Sleep(TrainerCallback):
    """Sleeps after each update (a child to be killed between two updates)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


class Poison(TrainerCallback):
    """Makes the forward passes of the given updates (1-based) produce NaN features, on one rank or all."""

    def __init__(self, updates: set[int], rank: int | None = None):
        self.updates, self.rank, self.handle = updates, rank, None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if self.rank in (None, args.process_index) and state.global_step + 1 in self.updates:
            self.handle = model.encoder.local.register_forward_hook(lambda m, i, o: (o[0] * float("nan"), o[1]))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe, *overrides = sys.argv[1:]
    resume = "--resume" in overrides
    overrides = [o for o in overrides if o != "--resume"]
    if os.environ.get("SEEN"):
        record_inputs(os.environ["SEEN"], float(os.environ.get("SLOW", "0")))
    if os.environ.get("SETUP"):
        record_resume_setup(os.environ["SETUP"], float(os.environ.get("SLOW_SETUP", "0")))
    callbacks = [DumpWeights()] if os.environ.get("DUMP") else []
    if os.environ.get("STEP_SLEEP"):
        callbacks.append(Sleep(float(os.environ["STEP_SLEEP"])))
    if os.environ.get("POISON"):
        rank, update = map(int, os.environ["POISON"].split(":"))
        callbacks.append(Poison({update}, rank))
    try:
        pretrain(load_recipe(recipe, overrides), resume=resume, callbacks=callbacks)
    finally:
        if torch.distributed.is_initialized():  # as multissl's command line does at its end
            torch.distributed.destroy_process_group()
