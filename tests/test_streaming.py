"""Streamed data: split across ranks and DataLoader workers, read in endless passes, and resumed
exactly after a SIGKILL in the middle of a pass."""

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from multissl.recipe import load_recipe
from multissl.train import build_model
from tests.run_driver import spawn, wait_for_update

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "text" / "tiny-v2.yaml"


@pytest.fixture
def shards(tmp_path, kjv_rows) -> Path:
    """30 verses in 4 files: about 40 blocks of 32 tokens, so 12 updates of 4 cross a pass."""
    folder = tmp_path / "shards"
    folder.mkdir()
    verses = [r["text"] for r in kjv_rows[::997][:30]]
    for k in range(4):
        (folder / f"part{k}.txt").write_text("\n".join(verses[k::4]) + "\n")
    return folder


def child(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return spawn(RECIPE, args, env)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def seen(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(f"{path}.rank0").read_text().splitlines()]


@pytest.mark.parametrize(("save_steps", "checkpoint"), [(4, 8), (5, 5)], ids=["workers-even", "a-worker-ahead"])
def test_streamed_run_killed_mid_pass_resumes_exactly(save_steps, checkpoint, tiny_args, shards, tmp_path):
    """Killed one update and a half after a checkpoint; with 2 workers, checkpoint-5 leaves worker 0
    one batch ahead of worker 1, which the resumed stream must take into account."""
    args = [*tiny_args, "--data", str(shards), "--streaming", "true", "--num_workers", "2", "--max_steps", "12",
            "--save_steps", str(save_steps), "--logging_steps", "4", "--shuffle_buffer", "8"]
    whole = tmp_path / "whole"
    finish(child([*args, "--output_dir", str(whole)], {"SEEN": str(tmp_path / "whole-seen")}))

    part = tmp_path / "part"
    killed = child([*args, "--output_dir", str(part)], {"SEEN": str(tmp_path / "killed-seen"), "SLOW": "0.3"})
    wait_for_update(tmp_path / "killed-seen", checkpoint + 1)  # mid-update, past the checkpoint, mid-pass
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert (part / f"checkpoint-{checkpoint}").is_dir() and not (part / "model.safetensors").exists()
    resumed = child([*args, "--output_dir", str(part), "--resume"], {"SEEN": str(tmp_path / "resumed-seen")})
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert f"the stream continues from checkpoint-{checkpoint} without replaying it" in err

    uninterrupted = seen(tmp_path / "whole-seen")
    before = [x for x in seen(tmp_path / "killed-seen") if x["update"] < checkpoint]  # what the checkpoint holds
    after = seen(tmp_path / "resumed-seen")
    assert [x["update"] for x in uninterrupted] == list(range(12))
    assert [x["update"] for x in after] == list(range(checkpoint, 12))
    # every example trained on exactly once, in the same order: none seen twice, none skipped
    assert before + after == uninterrupted
    rows = [r for x in uninterrupted for r in x["rows"]]
    assert len(rows) == 48 and len(set(rows)) < 48  # the run went past the end of a pass
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6


def test_streams_are_split_between_workers_and_passes(tiny_args, shards):
    recipe = load_recipe(RECIPE, [*tiny_args, "--data", str(shards), "--streaming", "true", "--shuffle_buffer", "0"])
    _, _, stream, collator, *_ = build_model(recipe)
    loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2, collate_fn=lambda x: x)
    seeds = [e["seed"] for _, batch in zip(range(30), loader, strict=False) for e in batch]
    parts = {s[2] for s in seeds}
    assert parts == {0, 1}  # both workers read, each its own files
    blocks = {}
    for s in seeds:
        blocks.setdefault(s[2], []).append(s)
    for part, own in blocks.items():
        assert [s[3] for s in own if s[1] == 0] == list(range(len([s for s in own if s[1] == 0])))
        assert any(s[1] == 1 for s in own), f"worker {part} did not start a second pass"


def test_a_resumed_stream_does_not_decode_what_it_skips():
    import datasets

    from multissl.data.streams import SeededStream

    made = []

    def make(row, seed):
        made.append(row["x"])
        return None if row["x"] == 3 else row  # row 3 is a bad file

    ds = datasets.Dataset.from_dict({"x": list(range(10))}).to_iterable_dataset()
    stream = SeededStream(ds, 0, make)
    record = {"parts": 1, "batches": {"0": 2}, "last": {"0": [0, 4]}}  # two batches of 2: rows 0-2 and 4
    assert stream.resume(record, batch_size=2) == 0
    it = iter(stream)
    assert [next(it)["x"] for _ in range(3)] == [5, 6, 7] and made == [5, 6, 7]
