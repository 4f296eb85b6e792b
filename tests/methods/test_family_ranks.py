"""The state the family keeps outside its weights (NNCLR's support queue, DeepCluster v2's bank, centroids
and assignments, SwAV's queue, PIRL's memory bank) under data parallelism: 2 CPU ranks (torchrun, gloo)
with batches of 4 end with the same state on both ranks and with the state of one process with batches of
8, and a 2-rank run killed with SIGKILL after a checkpoint and resumed with ``--resume`` ends with the
state and weights of the uninterrupted one. The heads use layer norm here: batch norm on CPU ranks
normalises each rank's rows on its own (PyTorch's SyncBatchNorm needs CUDA)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY_VISION, for_method

DRIVER = ROOT / "tests" / "methods" / "family_driver.py"
HEADS = ["--method.projector.hidden_dim", "32", "--method.projector.out_dim", "16", "--method.projector.norm", "layer",
         "--method.projector.last_norm", "false"]
SETTINGS = {  # small state that fills up within the run; what shows that it did
    "nnclr": [*HEADS, "--method.predictor.hidden_dim", "32", "--method.predictor.out_dim", "16",
              "--method.predictor.norm", "layer", "--method.queue_length", "16"],
    "deepcluster": [*HEADS, "--method.prototypes", "4", "--method.bank_size", "16", "--method.cluster_every", "3",
                    "--views.local_crops", "2", "--views.local_size", "8"],
    "swav": [*HEADS, "--method.prototypes", "6", "--method.queue_length", "16", "--method.queue_start", "0",
             "--method.freeze_prototypes", "1", "--views.local_crops", "2", "--views.local_size", "8"],
    "pirl": ["--method.tile_size", "4", "--method.negatives", "16"],
}
STATE = {"nnclr": ["queue", "queue_pointer", "queue_rows"],
         "deepcluster": ["bank", "bank_ids", "centroids", "assigned_ids", "assigned_clusters", "kmeans_runs"],
         "swav": ["queue", "queue_pointer", "queue_rows", "batches_seen"],
         "pirl": ["memory", "memory_rows", "batches_seen"]}


def start(nproc: int, recipe: Path, args: list[str], dump: Path, **env: str) -> subprocess.Popen:
    """The driver on ``nproc`` ranks, in a session of its own (so that a kill reaches every rank)."""
    dump.mkdir()
    env = {**os.environ, "DUMP": str(dump), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    return subprocess.Popen([sys.executable, *launcher, str(DRIVER), str(recipe), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


@pytest.mark.parametrize("method", list(SETTINGS))
def test_state_is_one_on_every_rank_follows_one_process_and_survives_kill_9(method, tmp_path, image_dirs):
    recipe = ROOT / "recipes" / "vision" / f"{method}-tiny.yaml"
    base = [*for_method(TINY_VISION, recipe), *SETTINGS[method], "--health.min_rank", "0", "--data",
            str(image_dirs[0]), "--max_steps", "8", "--save_steps", "4", "--logging_steps", "1", "--warmup_steps", "1"]
    finish(start(1, recipe, [*base, "--batch_size", "8", "--output_dir", str(tmp_path / "one")], tmp_path / "d1"))
    two = [*base, "--batch_size", "4"]
    finish(start(2, recipe, [*two, "--output_dir", str(tmp_path / "two")], tmp_path / "d2"))

    one, r0, r1 = (torch.load(tmp_path / d / f"rank{r}.pt") for d, r in (("d1", 0), ("d2", 0), ("d2", 1)))
    assert all(k in r0 for k in STATE[method])
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # one state (and one model) on every rank
    assert differ(one, r0) < 1e-4  # and the state one process with the global batch keeps
    for a, b in zip(rows(tmp_path / "one"), rows(tmp_path / "two"), strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(a["loss"])), (a, b)
    if method in ("nnclr", "swav"):
        assert int(r0["queue_rows"]) == 16 and int(r0["queue_pointer"]) == 0  # 8 batches of 8 through 16 rows
    if method == "swav":
        assert [r["queue_used"] for r in rows(tmp_path / "two")] == [0, 0] + [1] * 6  # used once full
    if method == "deepcluster":
        assert int(r0["kmeans_runs"]) == 3 and set(r0["bank_ids"].tolist()) <= set(range(64))  # at 1, 3 and 6
        assert rows(tmp_path / "two")[-1]["assigned"] > 0
    if method == "pirl":
        assert int(r0["memory_rows"]) > 8 and int(r0["batches_seen"]) == 8

    part = tmp_path / "part"
    killed = start(2, recipe, [*two, "--output_dir", str(part)], tmp_path / "d3", STEP_SLEEP="1")
    deadline = time.time() + 300
    while not (part / "checkpoint-4").is_dir() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)  # every rank, between two updates after the checkpoint
    killed.wait()
    assert (part / "checkpoint-4").is_dir() and not (part / "model.safetensors").exists()
    assert not any((tmp_path / "d3").iterdir())  # it never reached the end
    finish(start(2, recipe, [*two, "--output_dir", str(part), "--resume"], tmp_path / "d4"))
    resumed = torch.load(tmp_path / "d4" / "rank0.pt")
    assert differ(resumed, r0) <= 1e-6
