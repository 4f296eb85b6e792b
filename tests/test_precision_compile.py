"""The GPU path's options, run on the CPU: bf16 autocast (the teacher computes in bf16 from fp32
shadow weights) and torch.compile of the blocks. Both must follow the plain fp32 run closely."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from multissl.recipe import load_recipe
from multissl.train import pretrain

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "text" / "tiny-v2.yaml"
DETERMINISTIC = ["--encoder.dropout", "0", "--encoder.attention_dropout", "0", "--encoder.activation_dropout", "0",
                 "--method.mask_noise_std", "0", "--decoder.input_dropout", "0", "--max_steps", "3",
                 "--logging_steps", "1", "--encoder.depth", "2", "--top_k", "2"]


def losses(args, tmp_path, name, *extra):
    run_dir = pretrain(load_recipe(RECIPE, [*args, *DETERMINISTIC, "--output_dir", str(tmp_path / name), *extra]))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows], load_file(str(run_dir / "model.safetensors"))


def test_bf16_autocast_keeps_fp32_shadow_weights_and_follows_fp32(tiny_args, tmp_path):
    fp32, _ = losses(tiny_args, tmp_path, "fp32")
    bf16, weights = losses(tiny_args, tmp_path, "bf16", "--precision", "bf16")
    assert all(abs(a - b) / a < 0.02 for a, b in zip(fp32, bf16, strict=True)), (fp32, bf16)
    assert fp32 != bf16  # autocast really ran in bf16
    floats = {k: v.dtype for k, v in weights.items() if v.dtype.is_floating_point}
    assert set(floats.values()) == {torch.float32} and any(k.startswith("teacher.") for k in floats)


def inductor_or_skip() -> None:
    try:
        torch.compile(lambda x: x.sin() + 1, backend="inductor")(torch.ones(3))
    except Exception as e:  # no C++ compiler, or inductor unsupported here
        pytest.skip(f"torch.compile's inductor backend does not work on this machine: {str(e).splitlines()[0][:200]}")


def test_compiled_blocks_give_the_eager_losses(tiny_args, tmp_path, monkeypatch):
    """The blocks' compiled code (inductor's) really runs: a backend that wraps inductor counts the
    calls of the code it made, so a silent fallback to eager cannot pass as compiled."""
    from torch._inductor.compile_fx import compile_fx

    inductor_or_skip()
    calls = []

    def counting(graph, example_inputs):
        compiled = compile_fx(graph, example_inputs)

        def run(*args):
            calls.append(1)
            return compiled(*args)

        return run

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, *a, **k: real(fn, *a, **{**k, "backend": counting}))
    eager, _ = losses(tiny_args, tmp_path, "eager")
    assert not calls
    compiled, weights = losses(tiny_args, tmp_path, "compiled", "--compile", "true")
    # 3 updates, each through the 2 student and 2 teacher blocks: at least one compiled call each
    assert len(calls) >= 3 * 4, len(calls)
    assert all(abs(a - b) / a < 1e-3 for a, b in zip(eager, compiled, strict=True)), (eager, compiled)
    assert not any("_orig_mod" in k for k in weights)  # the state dict keeps its names
