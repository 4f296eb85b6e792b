"""The state the family keeps outside its weights (NNCLR's support queue, DeepCluster v2's bank, centroids
and assignments, SwAV's queue, PIRL's memory bank) under data parallelism: 2 CPU ranks (torchrun, gloo)
with batches of 4 end with the same state on both ranks and with the state of one process with batches
of 8, and a 2-rank run killed with SIGKILL after a checkpoint and resumed with ``--resume`` ends with the
state and weights of the uninterrupted one. The heads keep the recipes' batch norms (over the global
batch, on CPU ranks too). The 2-rank runs of the four objectives share one torchrun job (start-up is
most of a tiny run's time)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from multissl.recipe import load_recipe
from multissl.train import pretrain
from tests.conftest import ROOT, TINY_VISION, for_method

HEADS = ["--method.projector.hidden_dim", "32", "--method.projector.out_dim", "16"]
SETTINGS = {  # small state that fills up within the run; what shows that it did
    "nnclr": [*HEADS, "--method.predictor.hidden_dim", "32", "--method.predictor.out_dim", "16",
              "--method.queue_length", "16"],
    "deepcluster": [*HEADS, "--method.prototypes", "4", "--method.bank_size", "16", "--method.cluster_every", "3",
                    "--views.local_crops", "2", "--views.local_size", "8"],
    "swav": [*HEADS, "--method.prototypes", "6", "--method.queue_length", "16", "--method.queue_start", "0",
             "--method.freeze_prototypes", "1", "--views.local_crops", "2", "--views.local_size", "8"],
    "pirl": ["--method.tile_size", "4", "--method.negatives", "16"],
}
STATE = {"nnclr": ["queue", "queue_pointer", "queue_rows"],
         "deepcluster": ["bank", "bank_ids", "bank_pointer", "centroids", "assigned_ids", "assigned_clusters",
                         "kmeans_runs", "batches_seen"],
         "swav": ["queue", "queue_pointer", "queue_rows", "batches_seen", "prototypes.weight"],
         "pirl": ["memory", "memory_rows", "normaliser", "batches_seen"]}
# killed and resumed: a queue (NNCLR) and a bank with its k-means (DeepCluster); SwAV's queue and PIRL's memory
# are persistent buffers saved the same way (their state is compared across ranks above), and each killed
# 2-rank job costs ~20 s of the suite
KILLED = ["nnclr", "deepcluster"]
STEPS = ["--max_steps", "8", "--save_steps", "4", "--logging_steps", "1", "--warmup_steps", "1"]


def recipe_of(method: str) -> Path:
    return ROOT / "recipes" / "vision" / f"{method}-tiny.yaml"


def args_of(method: str, data: Path) -> list[str]:
    return [*for_method(TINY_VISION, recipe_of(method)), *SETTINGS[method], "--health.min_rank", "0",
            "--data", str(data), *STEPS]


def start(nproc: int, driver: list[str], **env: str) -> subprocess.Popen:
    """A driver on ``nproc`` ranks, in a session of its own (so that a kill reaches every rank)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    return subprocess.Popen([sys.executable, *launcher, *driver], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: list[str] | None = None) -> float:
    keys = list(a) if keys is None else keys
    assert set(keys) <= a.keys() and set(keys) <= b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in keys if a[k].numel())


@pytest.fixture(scope="module")
def few_images(tmp_path_factory, image_dirs) -> Path:
    """16 real digit images: a global batch of 8 sees each twice in 4 updates, so DeepCluster's bank holds the
    samples it trains on (as the paper's bank holds the whole data set)."""
    folder = tmp_path_factory.mktemp("few_images")
    for path in sorted(image_dirs[0].glob("*.png"))[:16]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, few_images) -> Path:
    """Uninterrupted 2-rank runs (batches of 4) of every objective, in one torchrun job: ``ROOT/METHOD``
    holds the run, ``ROOT/METHOD-dump`` each rank's final weights and buffers."""
    root = tmp_path_factory.mktemp("two_ranks")
    runs = [{"recipe": str(recipe_of(m)), "dump": str(root / f"{m}-dump"),
             "args": [*args_of(m, few_images), "--batch_size", "4", "--output_dir", str(root / m)]}
            for m in SETTINGS]
    for run in runs:
        Path(run["dump"]).mkdir()
    (root / "runs.json").write_text(json.dumps(runs))
    finish(start(2, [str(ROOT / "tests" / "methods" / "family_driver.py"), str(root / "runs.json")]))
    return root


@pytest.mark.parametrize("method", list(SETTINGS))
def test_state_is_one_on_every_rank_and_follows_one_process(method, two_ranks, tmp_path, few_images):
    one_run = pretrain(load_recipe(recipe_of(method), [*args_of(method, few_images), "--batch_size", "8",
                                                      "--output_dir", str(tmp_path / "one")]))
    one = load_file(str(one_run / "model.safetensors"))
    r0, r1 = (torch.load(two_ranks / f"{method}-dump" / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # one state (and one model) on every rank
    # the state one process with the global batch keeps (the weights drift apart by float rounding, which
    # Adam magnifies where a gradient is zero in exact arithmetic: biases before a batch norm)
    assert differ(one, r0, STATE[method]) < 1e-4
    two = rows(two_ranks / method)
    for a, b in zip(rows(one_run), two, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(a["loss"])), (a, b)
    if method in ("nnclr", "swav"):
        assert int(r0["queue_rows"]) == 16 and int(r0["queue_pointer"]) == 0  # 8 batches of 8 through 16 rows
    if method == "swav":
        assert [r["queue_used"] for r in two] == [0, 0] + [1] * 6  # used once full
    if method == "deepcluster":
        assert int(r0["kmeans_runs"]) == 3 and sorted(r0["bank_ids"].tolist()) == list(range(16))  # at 1, 3, 6
        # none before the first k-means (batch 1, on batch 0's rows) has a sample of batch 0 again; from
        # the k-means of batch 6 on (the bank: batches 4 and 5, a whole pass) every sample is assigned
        assert [r["assigned"] > 0 for r in two] == [False, False] + [True] * 6 and two[2]["loss"] > 0
        assert two[-2]["assigned"] == two[-1]["assigned"] == 1
    if method == "pirl":
        assert int(r0["memory_rows"]) > 8 and int(r0["batches_seen"]) == 8 and float(r0["normaliser"]) > 0


def test_state_survives_kill_9_and_resume_exactly(two_ranks, tmp_path, few_images):
    """A queue's and a bank's 2-rank runs killed (SIGKILL to every rank) after its checkpoint of update 4; then one
    torchrun job resumes them all."""
    resumed = []
    for method in KILLED:
        part, dump = tmp_path / method, tmp_path / f"{method}-dump"
        dump.mkdir()
        args = [*args_of(method, few_images), "--batch_size", "4", "--output_dir", str(part)]
        killed = start(2, [str(ROOT / "tests" / "run_driver.py"), str(recipe_of(method)), *args], DUMP=str(dump),
                       STEP_SLEEP="0.5")
        deadline = time.time() + 300
        while not (part / "checkpoint-4").is_dir() and killed.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(killed.pid, signal.SIGKILL)  # every rank, between two updates after the checkpoint
        killed.wait()
        assert (part / "checkpoint-4").is_dir() and not (part / "model.safetensors").exists(), method
        assert not any(dump.iterdir()), method  # it never reached the end
        saved = load_file(str(part / "checkpoint-4" / "model.safetensors"))  # the state is in the checkpoint
        assert differ(saved, load_file(str(two_ranks / method / "checkpoint-4" / "model.safetensors")),
                      STATE[method]) == 0, method
        resumed.append({"recipe": str(recipe_of(method)), "args": args, "dump": str(dump), "resume": True})
    (tmp_path / "runs.json").write_text(json.dumps(resumed))
    finish(start(2, [str(ROOT / "tests" / "methods" / "family_driver.py"), str(tmp_path / "runs.json")]))
    for method in KILLED:
        assert [r["step"] for r in rows(tmp_path / method)] == list(range(1, 9)), method  # each update logged once
        full = torch.load(two_ranks / f"{method}-dump" / "rank0.pt")
        for r in (0, 1):
            after = torch.load(tmp_path / f"{method}-dump" / f"rank{r}.pt")
            assert differ(after, full) <= 1e-6, (method, r)  # the state and the weights of the uninterrupted run
