"""Faults a week-long run meets: non-finite losses, a collapsing model, a corrupt newest checkpoint
and a full disk while saving."""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file

from multissl.checkpoints import CheckpointError, problem
from multissl.recipe import load_recipe
from multissl.train import CollapseError, NonFiniteError, pretrain
from tests.run_driver import Poison, StopAt

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "text" / "tiny-v2.yaml"


def run(args, *extra, callbacks=None, resume=False):
    return pretrain(load_recipe(TINY, [*args, *extra]), resume=resume, callbacks=callbacks)


def out_dir(args) -> Path:
    return Path(args[args.index("--output_dir") + 1])


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_a_nan_loss_skips_the_update_and_is_counted(tiny_args):
    run_dir = run(tiny_args, "--max_steps", "6", "--logging_steps", "1", callbacks=[Poison({3})])
    logged = rows(run_dir)
    assert [r["skipped_updates"] for r in logged] == [0, 0, 1, 1, 1, 1]
    final = load_file(str(run_dir / "model.safetensors"))
    assert all(torch.isfinite(v.double()).all() for v in final.values())
    assert int(final["ema_updates"]) == 5  # the teacher did not step on the skipped update


def test_nan_losses_in_a_row_save_the_last_healthy_weights_and_stop(tiny_args, tmp_path):
    with pytest.raises(NonFiniteError, match=r"3 updates in a row .* up to step 4; last healthy step 1: loss="):
        run(tiny_args, "--max_steps", "8", "--max_nonfinite", "3", callbacks=[Poison(set(range(2, 9)))])
    saved = load_file(str(out_dir(tiny_args) / "checkpoint-4" / "model.safetensors"))
    one = run(tiny_args, "--max_steps", "1", "--output_dir", str(tmp_path / "one"))
    assert max_diff(saved, load_file(str(one / "model.safetensors"))) == 0.0  # skipped updates changed nothing


def test_a_far_too_high_learning_rate_collapses_the_predictions(tiny_args, caplog):
    hot = ["--lr", "1", "--warmup_steps", "0", "--health.check_after", "0", "--health.min_pred_var", "0.01",
           "--max_steps", "40", "--logging_steps", "5", "--save_steps", "100"]
    with pytest.raises(CollapseError, match=r"pred_var 0\.00\d+ < min_pred_var 0.01 at step \d+"):
        run(tiny_args, *hot, "--health.action", "stop")
    stopped = [p.name for p in out_dir(tiny_args).glob("checkpoint-*")]
    assert len(stopped) == 1 and int(stopped[0].split("-")[1]) < 40  # saved where it stopped
    with caplog.at_level("WARNING"):
        warned = run(tiny_args, *hot, "--health.action", "warn", "--output_dir", str(out_dir(tiny_args)) + "-w")
    assert "the student's predictions collapsed" in caplog.text
    assert rows(warned)[-1]["step"] == 40  # warn goes on to the end
    calm = run(tiny_args, *hot[2:], "--lr", "1e-3", "--health.action", "stop",
               "--output_dir", str(out_dir(tiny_args)) + "-calm")
    assert min(r["pred_var"] for r in rows(calm)) > 0.01  # the same guard passes a sane run


@pytest.mark.parametrize("damage", ["truncate", "flip", "unsealed"])
def test_resume_falls_back_from_a_damaged_newest_checkpoint(tiny_args, tmp_path, damage, caplog):
    full = run(tiny_args, "--max_steps", "9", "--output_dir", str(tmp_path / "full"))
    part = out_dir(tiny_args)
    run(tiny_args, "--max_steps", "9", callbacks=[StopAt(6)])
    newest = part / "checkpoint-6"
    target = newest / "optimizer.pt"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    else:
        (newest / "multissl-checkpoint.json").unlink()
    with caplog.at_level("WARNING"):
        run(tiny_args, "--max_steps", "9", resume=True)
    why = {"truncate": "optimizer.pt is truncated", "flip": "optimizer.pt is corrupt",
           "unsealed": "no valid multissl-checkpoint.json"}
    assert f"checkpoint-6 is unusable: {why[damage]}" in caplog.text and "falling back" in caplog.text
    assert (part / "checkpoint-6.bad").is_dir() and problem(part / "checkpoint-6") is None  # set aside, redone
    assert max_diff(load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))) <= 1e-6


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tiny_args, monkeypatch):
    real = safetensors.torch.save_file
    calls = []

    def fill_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # the second checkpoint: half a file, then ENOSPC
            with open(filename, "wb") as fh:
                fh.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", fill_disk)
    with pytest.raises(CheckpointError, match=r"checkpoint-6 failed \(No space left on device; .+ free in .+\); "
                                              r"checkpoint-3 is intact"):
        run(tiny_args, "--max_steps", "9")
    part = out_dir(tiny_args)
    assert sorted(p.name for p in part.iterdir() if "checkpoint" in p.name) == ["checkpoint-3"]
    assert problem(part / "checkpoint-3") is None
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    run(tiny_args, "--max_steps", "9", resume=True)  # and the run goes on from it
    assert int(load_file(str(part / "model.safetensors"))["ema_updates"]) == 9


def test_sigterm_saves_a_checkpoint_stops_and_resumes_exactly(tiny_args, tmp_path):
    import signal

    from tests.run_driver import spawn, wait_for_update

    args = [*tiny_args, "--max_steps", "8", "--save_steps", "100"]
    whole = run(args, "--output_dir", str(tmp_path / "whole"))
    part = tmp_path / "part"
    child = spawn(TINY, [*args, "--output_dir", str(part)], {"SEEN": str(tmp_path / "seen"), "SLOW": "0.3"})
    wait_for_update(tmp_path / "seen", 2)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=300)
    assert child.returncode != 0 and "stopped by SIGTERM at step 3; checkpoint-3 saved" in err, err[-2000:]
    assert problem(part / "checkpoint-3") is None and not (part / "model.safetensors").exists()
    run(args, "--output_dir", str(part), resume=True)
    # 1e-5: Adam turns float noise between processes into last-digit differences on a few weights
    assert max_diff(load_file(str(whole / "model.safetensors")), load_file(str(part / "model.safetensors"))) <= 1e-5


@pytest.fixture
def small_disk(tmp_path):
    """A real 40 MB file system (tmpfs), unmounted afterwards; skipped where mounting is not allowed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_really_full_disk_stops_with_one_line_and_the_last_checkpoint_resumes(small_disk, kjv_file, tokenizer_dir,
                                                                                tmp_path):
    """The tiny text recipe writes checkpoints of ~15 MB: two fit in 40 MB, the third fills the disk
    (torch.save then fails with a short write, not an OSError)."""
    run_dir = small_disk / "run"
    args = [sys.executable, "-m", "multissl", "pretrain", str(ROOT / "recipes" / "text" / "tiny.yaml"),
            "--data", str(kjv_file), "--tokenizer", str(tokenizer_dir), "--batch_size", "4", "--report_to", "none",
            "--max_steps", "80", "--save_steps", "20", "--save_total_limit", "2", "--logging_steps", "10"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*args, "--output_dir", str(run_dir)], env=env, capture_output=True, text=True, timeout=600)
    err = done.stderr.strip()
    assert done.returncode == 3, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    stopped = [line for line in err.splitlines() if line.startswith("multissl:")]
    assert len(stopped) == 1, err[-3000:]
    assert re.fullmatch(rf"multissl: stopped: saving {run_dir}/checkpoint-60 failed \(No space left on device; "
                        rf"[\d.]+ MB free in {run_dir}, a checkpoint takes [\d.]+ MB\); checkpoint-40 is intact",
                        stopped[0]), err
    assert sorted(p.name for p in run_dir.iterdir() if "checkpoint" in p.name) == ["checkpoint-20", "checkpoint-40"]
    assert problem(run_dir / "checkpoint-40") is None
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)  # to a disk with room
    done = subprocess.run([*args, "--output_dir", str(moved), "--resume"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(load_file(str(moved / "model.safetensors"))["ema_updates"]) == 80
    assert [r["step"] for r in rows(moved)] == list(range(10, 90, 10))  # on from step 40; 50 and 60 once
    assert len((moved / "metrics.csv").read_text().splitlines()) == 1 + 8


def fp16_nan_run(tiny_args) -> Path:
    """fp16, no gradient clipping, update 3's loss NaN."""
    return run(tiny_args, "--precision", "fp16", "--max_grad_norm", "0", "--max_steps", "6", "--logging_steps", "1",
               "--save_steps", "100", callbacks=[Poison({3})])


def check_skipped_once(run_dir: Path) -> None:
    assert [r["skipped_updates"] for r in rows(run_dir)] == [0, 0, 1, 1, 1, 1]
    final = load_file(str(run_dir / "model.safetensors"))
    assert all(torch.isfinite(v.double()).all() for v in final.values())
    assert int(final["ema_updates"]) == 5


def test_fp16_nan_loss_without_clipping_is_skipped_by_the_grad_scaler(tiny_args, monkeypatch):
    """accelerate gives fp16 a GradScaler on CUDA only (on the CPU it runs fp32 without one), so here
    the CPU's own torch.amp.GradScaler is put where accelerate puts the CUDA one: backward, unscale
    and step go through it as on a GPU, without the fp16 autocast."""
    import accelerate

    scalers = []
    init = accelerate.Accelerator.__init__

    def with_cpu_scaler(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if self.mixed_precision == "fp16" and self.scaler is None:
            self.scaler = torch.amp.GradScaler("cpu")
            scalers.append(self.scaler)

    monkeypatch.setattr(accelerate.Accelerator, "__init__", with_cpu_scaler)
    check_skipped_once(fp16_nan_run(tiny_args))
    assert scalers and scalers[0].get_scale() == 2.0**15  # the scaler itself skipped the step (and backed off)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 mixed precision (autocast and GradScaler) needs "
                    "CUDA: accelerate runs precision=fp16 in fp32 on the CPU")
def test_fp16_nan_loss_without_clipping_on_cuda(tiny_args):
    check_skipped_once(fp16_nan_run(tiny_args))
