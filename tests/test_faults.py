"""Faults a week-long run meets: non-finite losses, a collapsing model, a corrupt newest checkpoint
and a full disk while saving."""

import errno
import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file

from multissl.checkpoints import CheckpointError, problem
from multissl.config import load_recipe
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
    with pytest.raises(CheckpointError, match=r"checkpoint-6 failed \(No space left on device\); checkpoint-3 is"):
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
    assert max_diff(load_file(str(whole / "model.safetensors")), load_file(str(part / "model.safetensors"))) <= 1e-6
