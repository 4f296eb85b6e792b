"""Data parallelism on 2 CPU processes (gloo) under torchrun: the run must follow the same trajectory
as one process with the same global batch, and keep one teacher, one checkpoint and one final model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "text" / "tiny-v2.yaml"
# dropout and the decoder's input noise draw from each rank's own generator; turned off here so that
# the two runs see identical randomness and must agree to float tolerance
DETERMINISTIC = ["--encoder.dropout", "0", "--encoder.attention_dropout", "0", "--encoder.activation_dropout", "0",
                 "--method.mask_noise_std", "0", "--decoder.input_dropout", "0", "--max_steps", "6",
                 "--logging_steps", "1", "--save_steps", "3", "--warmup_steps", "2", "--schedule", "cosine",
                 "--method.clones", "2"]


def launch(nproc: int, args: list[str], dump: Path, recipe: Path = RECIPE, **extra: str) -> None:
    dump.mkdir()
    env = {**os.environ, "DUMP": str(dump), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}
    driver = [str(ROOT / "tests" / "run_driver.py"), str(recipe), *args]
    cmd = [sys.executable, *(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                             if nproc > 1 else []), *driver]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_follow_one_rank_with_the_same_global_batch(tiny_args, tmp_path):
    base = [a for a in tiny_args]
    base[base.index("--output_dir") + 1] = str(tmp_path / "one")
    base[base.index("--batch_size") + 1] = "4"
    launch(1, [*base, *DETERMINISTIC], tmp_path / "dump1")
    two = [*base, *DETERMINISTIC, "--output_dir", str(tmp_path / "two"), "--batch_size", "2"]
    launch(2, two, tmp_path / "dump2")

    one_rows, two_rows = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [r["step"] for r in two_rows] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(one_rows, two_rows, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(a["loss"])), (a, b)
        assert a["learning_rate"] == b["learning_rate"]  # the schedule follows the global step
        assert a["ema_decay"] == b["ema_decay"]
        assert abs(a["target_var"] - b["target_var"]) <= 1e-4  # over the global batch
        assert abs(a["pred_var"] - b["pred_var"]) <= 1e-4

    r0 = torch.load(tmp_path / "dump2" / "rank0.pt")
    r1 = torch.load(tmp_path / "dump2" / "rank1.pt")
    assert any(k.startswith("teacher.") for k in r0)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # one teacher (and student) on every rank
    single = torch.load(tmp_path / "dump1" / "rank0.pt")
    diff = max((single[k].double() - r0[k].double()).abs().max().item() for k in single)
    assert diff < 1e-4
    assert int(r0["ema_updates"]) == 6

    run = tmp_path / "two"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(("checkpoint", "."))) == \
        ["checkpoint-3", "checkpoint-6"]
    ckpt = run / "checkpoint-6"
    assert {"rng_state_0.pth", "rng_state_1.pth", "multissl-checkpoint.json"} <= {p.name for p in ckpt.iterdir()}
    final = load_file(str(run / "model.safetensors"))  # the one final model is rank 0's weights
    assert final.keys() == r0.keys() and all(torch.equal(final[k], r0[k]) for k in final)
    from transformers import AutoModel

    from multissl.export.hf import export

    out = export(run, tmp_path / "export")  # checks parity with the HF class on its way
    assert AutoModel.from_pretrained(out).config.num_hidden_layers == 3


def test_a_nan_on_one_rank_skips_the_update_on_every_rank(tiny_args, tmp_path):
    args = [*tiny_args, "--max_steps", "4", "--logging_steps", "1", "--batch_size", "2",
            "--output_dir", str(tmp_path / "run")]
    launch(2, args, tmp_path / "dump", POISON="1:2")  # rank 1's forward of update 2 gives NaN
    assert [r["skipped_updates"] for r in rows(tmp_path / "run")] == [0, 1, 1, 1]
    r0, r1 = torch.load(tmp_path / "dump" / "rank0.pt"), torch.load(tmp_path / "dump" / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0) and int(r0["ema_updates"]) == 3
    assert all(torch.isfinite(v.double()).all() for v in r0.values())


def seen_rows(path: Path, rank: int) -> list[int]:
    lines = Path(f"{path}.rank{rank}").read_text().splitlines()
    return [r for line in lines for r in json.loads(line)["rows"]]


@pytest.mark.parametrize("modality", ["text", "audio", "vision"])
def test_streams_are_split_between_ranks(modality, tiny_args, speech_dir, image_dirs, kjv_rows, tmp_path):
    """Each rank reads its own files of a stream (2 ranks, 4 files): no example is trained on twice."""
    from tests.conftest import TINY_AUDIO, TINY_VISION

    data = tmp_path / "data"
    data.mkdir()
    if modality == "text":
        recipe, extra = RECIPE, tiny_args
        for k in range(4):
            (data / f"part{k}.txt").write_text("\n".join(r["text"] for r in kjv_rows[k * 50:(k + 1) * 50]) + "\n")
    else:
        recipe = ROOT / "recipes" / modality / "tiny.yaml"
        extra = TINY_AUDIO if modality == "audio" else TINY_VISION
        found = speech_dir.glob("*.wav") if modality == "audio" else image_dirs[0].glob("*.png")
        files = sorted(found)[:8]
        for f in files:
            (data / f.name).write_bytes(f.read_bytes())
    args = [*extra, "--data", str(data), "--streaming", "true", "--max_steps", "2", "--batch_size", "2",
            "--output_dir", str(tmp_path / "run"), "--report_to", "none"]
    env = {**os.environ, "SEEN": str(tmp_path / "seen"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "run_driver.py"), str(recipe), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = seen_rows(tmp_path / "seen", 0), seen_rows(tmp_path / "seen", 1)
    assert len(r0) == len(r1) == 4 and not set(r0) & set(r1)
    assert int(load_file(str(tmp_path / "run" / "model.safetensors"))["ema_updates"]) == 2


def test_fsdp2_shards_the_teacher_like_the_student_and_matches_one_process(tiny_args, tmp_path):
    """The EMA over sharded parameters: each rank averages its own shard of each teacher tensor with
    the same shard of the student's, so the result equals the unsharded run."""
    fast_ema = ["--method.ema.decay", "0.5", "--method.ema.end_decay", "0.5"]  # the teacher moves visibly
    args = [str(ROOT / "tests" / "fsdp_driver.py"), str(RECIPE), *tiny_args, *DETERMINISTIC, *fast_ema]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--standalone",
                                                 "--nproc_per_node=2"])):
        (tmp_path / name).mkdir()
        done = subprocess.run([sys.executable, *launcher, *args], env={**env, "OUT": str(tmp_path / name)},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    shards = json.loads((tmp_path / "two" / "shards.json").read_text())
    teacher = {k: v for k, v in shards.items() if k.startswith("teacher.blocks.")}
    assert teacher and all(shards["encoder." + k[len("teacher."):]] == v for k, v in teacher.items())
    qkv = shards["teacher.blocks.0.attn.qkv.weight"]
    assert qkv[0] == "S(0)" and qkv[1][0] * 2 == qkv[2][0]  # each rank holds half the rows
    one, two = torch.load(tmp_path / "one" / "weights.pt"), torch.load(tmp_path / "two" / "weights.pt")
    assert one.keys() == two.keys() and int(two["ema_updates"]) == 3
    assert max((one[k].double() - two[k].double()).abs().max().item() for k in one) < 1e-4
    moved = (one["teacher.blocks.0.attn.qkv.weight"] - one["encoder.blocks.0.attn.qkv.weight"]).abs().max()
    assert moved > 5e-4  # the EMA lag is 5x the tolerance: a shard left unaveraged would show


def test_fsdp_outside_a_multi_gpu_job_is_a_one_line_error(tiny_args):
    from multissl.recipe import RecipeError, load_recipe
    from multissl.train import pretrain

    with pytest.raises(RecipeError, match=r"train.fsdp='full_shard' needs a torchrun job on several CUDA GPUs"):
        pretrain(load_recipe(RECIPE, [*tiny_args, "--fsdp", "full_shard"]))


def test_streamed_two_rank_run_preempted_and_resumed_exactly(tiny_args, kjv_rows, tmp_path):
    """SIGTERM to torchrun mid-run: every rank finishes the update, one checkpoint holds both ranks'
    stream positions and RNG states, and the resumed run ends as an uninterrupted one."""
    import signal

    data = tmp_path / "data"
    data.mkdir()
    for k in range(4):
        (data / f"part{k}.txt").write_text("\n".join(r["text"] for r in kjv_rows[k * 40:(k + 1) * 40]) + "\n")
    args = [*tiny_args, "--data", str(data), "--streaming", "true", "--num_workers", "1", "--max_steps", "8",
            "--batch_size", "2", "--save_steps", "100", "--shuffle_buffer", "4"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(ROOT / "tests" / "run_driver.py"), str(RECIPE)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def start(name: str, *extra: str, **more: str) -> subprocess.Popen:
        return subprocess.Popen([*torchrun, *args, "--output_dir", str(tmp_path / name), *extra],
                                env={**env, "SEEN": str(tmp_path / f"{name}-seen"), **more},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    whole = start("whole")
    assert whole.wait(timeout=600) == 0, whole.stderr.read()[-3000:]
    part = start("part", SLOW="0.5")
    from tests.run_driver import wait_for_update

    wait_for_update(tmp_path / "part-seen", 3)
    part.send_signal(signal.SIGTERM)
    _, err = part.communicate(timeout=300)
    assert "stopped by SIGTERM at step 4; checkpoint-4 saved" in err, err[-3000:]
    ckpt = tmp_path / "part" / "checkpoint-4"
    assert {"stream_rank0.json", "stream_rank1.json"} <= {p.name for p in ckpt.iterdir()}
    resumed = start("part", "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "the stream continues from checkpoint-4 without replaying it" in err
    for rank in (0, 1):  # the stopped run did updates 0-3, the resumed one 4-7: the same as the whole run
        stopped_and_resumed = Path(f"{tmp_path / 'part-seen'}.rank{rank}").read_text().splitlines()
        whole_run = Path(f"{tmp_path / 'whole-seen'}.rank{rank}").read_text().splitlines()
        assert [json.loads(x) for x in stopped_and_resumed] == [json.loads(x) for x in whole_run]
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6


def seen_updates(path: Path, rank: int) -> list[list[tuple[int, int]]]:
    """Per update, the (row, masks) hash pairs a rank trained on."""
    lines = [json.loads(x) for x in Path(f"{path}.rank{rank}").read_text().splitlines()]
    return [list(zip(x["rows"], x["masks"], strict=True)) for x in lines]


@pytest.mark.parametrize("modality", ["text", "vision"])
def test_each_epoch_draws_new_masks_and_crops_on_two_ranks_as_on_one(modality, tiny_args, image_dirs, kjv_rows,
                                                                     tmp_path):
    """Map-style data, 3 updates of a global batch of 4 per epoch, 2 epochs: the second epoch's
    examples are masked (and cropped) anew, on 2 ranks exactly as on 1."""
    from tests.conftest import TINY_VISION

    data = tmp_path / "data"
    data.mkdir()
    if modality == "text":  # 15 blocks of 32 tokens: 3 updates per epoch
        recipe, extra = RECIPE, tiny_args
        (data / "verses.txt").write_text("\n".join(r["text"] for r in kjv_rows[:12]) + "\n")
    else:
        recipe, extra = ROOT / "recipes" / "vision" / "tiny.yaml", TINY_VISION
        for f in sorted(image_dirs[0].glob("*.png"))[:12]:
            (data / f.name).write_bytes(f.read_bytes())
    args = [*extra, "--data", str(data), "--max_steps", "6", "--save_steps", "100", "--report_to", "none"]
    from multissl.recipe import load_recipe
    from multissl.train import build_model

    blocks = len(build_model(load_recipe(recipe, [*args, "--output_dir", str(tmp_path / "x")]))[2])
    assert blocks // 4 == 3, blocks
    for n in (1, 2):
        launch(n, [*args, "--batch_size", str(4 // n), "--output_dir", str(tmp_path / f"run{n}")], tmp_path / f"d{n}",
               recipe, SEEN=str(tmp_path / f"seen{n}"))
    one = seen_updates(tmp_path / "seen1", 0)
    two = [a + b for a, b in zip(seen_updates(tmp_path / "seen2", 0), seen_updates(tmp_path / "seen2", 1), strict=True)]
    assert len(one) == len(two) == 6
    assert [sorted(u) for u in two] == [sorted(u) for u in one]  # the same examples, masks and crops
    first, second = {p for u in two[:3] for p in u}, {p for u in two[3:] for p in u}
    rows = {r for r, _ in first} & {r for r, _ in second}
    if modality == "text":
        assert len(rows) >= 6  # most blocks come back in epoch 2 ...
    else:
        assert not rows  # ... crops are new for every image ...
    assert not first & second  # ... and no example comes back with the same masks


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_on_other_nodes_wait_for_the_main_rank_to_set_the_run_folder_up(tiny_args, tmp_path):
    """Two "nodes" of one process each (two torchrun launchers, both ranks local rank 0) resume a run:
    rank 1 must not look for the checkpoint before rank 0 (slowed by 3 s) has finished with the run
    folder, as with a node-local barrier it would."""
    from multissl.recipe import load_recipe
    from multissl.train import pretrain

    args = [*tiny_args, "--max_steps", "3", "--save_steps", "3", "--output_dir", str(tmp_path / "run")]
    pretrain(load_recipe(RECIPE, args))
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "SETUP": str(tmp_path / "setup"),
           "SLOW_SETUP": "3"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={n}",
                               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
                               str(ROOT / "tests" / "run_driver.py"), str(RECIPE), *args, "--resume"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for n in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    main, other = (json.loads(Path(f"{tmp_path / 'setup'}.rank{r}").read_text()) for r in (0, 1))
    assert other["start"] >= main["end"], (main, other)


def _decide_on_rank(rank: int, store: str, out: str) -> None:
    """One of 2 gloo ranks holding its own shard of a gradient (rank 1's holds a NaN), as under FSDP,
    asks the trainer whether to skip the update."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from multissl.trainer import PretrainTrainer

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    model = torch.nn.Linear(4, 2)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.1 * (rank + 1))
    if rank == 1:
        model.weight.grad[0, 1] = float("nan")
    optimizer = torch.optim.AdamW(model.parameters())
    trainer = SimpleNamespace(args=SimpleNamespace(fp16=False, device=torch.device("cpu")),
                              accelerator=SimpleNamespace(scaler=None), state=SimpleNamespace(global_step=0),
                              _nonfinite_in_update=False, skip_this_update=False, skipped_updates=0,
                              nonfinite_streak=0)
    PretrainTrainer.decide_update(trainer, model, optimizer)
    result = {"skip": trainer.skip_this_update, "skipped": trainer.skipped_updates,
              "grads_dropped": all(p.grad is None for p in model.parameters())}
    Path(f"{out}.rank{rank}").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_a_nan_in_one_ranks_gradient_shard_skips_the_update_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    import multissl.trainer  # noqa: F401  (imported once here; the forked ranks inherit it)

    mp.start_processes(_decide_on_rank, args=(str(tmp_path / "store"), str(tmp_path / "decision")), nprocs=2,
                       start_method="fork")
    decisions = [json.loads(Path(f"{tmp_path / 'decision'}.rank{r}").read_text()) for r in (0, 1)]
    assert decisions == [{"skip": True, "skipped": 1, "grads_dropped": True}] * 2, decisions
