"""Training throughput and model FLOPs utilisation (MFU) of the base recipes, through multissl's own
training path (the Trainer, bf16 autocast, fused AdamW, the EMA and guard callbacks), beside the
exported Hugging Face encoder's plain forward+backward on the same batch in the same run.

FLOPs are counted, not estimated: ``torch.utils.flop_counter`` over one forward+backward of the step
(student, decoder or head, and the teacher pass). MFU divides the achieved FLOP/s by the dense
matmul peak measured on this device in the compute dtype at the start of the run (``--peak-tflops``
uses a given figure instead). Inputs are random tensors of the recipe's shapes: this measures the
model step, not the data path.

    python tools/bench_gpu.py                       # on a GPU: the data2vec 2.0 base recipes
    python tools/bench_gpu.py --recipes data2vec-base data2vec2-base --compile
    python tools/bench_gpu.py --tiny                # on the CPU: tiny shapes, checks that it all runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = {
    "common": ["--encoder.dim", "64", "--encoder.depth", "2", "--encoder.heads", "4", "--encoder.ffn_dim", "128",
               "--top_k", "2", "--decoder.layers", "2", "--decoder.dim", "64", "--batch_size", "2"],
    "text": ["--adapter.max_length", "64", "--decoder.groups", "1"],
    "audio": ["--conv_dim", "[64, 64, 64, 64, 64, 64, 64]", "--pos_conv_groups", "4", "--pos_conv_depth", "2",
              "--max_samples", "16000", "--decoder.groups", "4"],
    "vision": ["--image_size", "32", "--patch_size", "4", "--decoder.groups", "4"],
}


def measured_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Dense matmul FLOP/s on this device in ``dtype`` (best of a few large square products)."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = 0.0
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        best = max(best, 10 * 2 * n**3 / (time.perf_counter() - t))
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic(modality: str, cfg: Any, n: int) -> list[dict[str, Any]]:
    """``n`` random examples shaped as the recipe's data path makes them."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        if modality == "text":
            ids = rng.integers(5, cfg.vocab_size, cfg.max_length).tolist()
            x: dict[str, Any] = {"input_ids": [cfg.bos_token_id, *ids[1:]]}
        elif modality == "audio":
            x = {"input_values": rng.standard_normal(cfg.max_samples).astype(np.float32)}
        else:
            x = {"pixel_values": torch.from_numpy(rng.standard_normal((3, cfg.image_size, cfg.image_size),
                                                                      dtype=np.float32))}
        out.append({**x, "seed": (0, 0, i)})
    return out


def units(modality: str, cfg: Any, batch: int) -> tuple[str, float]:
    if modality == "text":
        return "tokens/s", batch * cfg.max_length
    if modality == "audio":
        return "audio s/s", batch * cfg.max_samples / cfg.sample_rate
    return "images/s", batch


def collator(modality: str, recipe: Any, cfg: Any) -> Any:
    from multissl.methods import get_method
    from multissl.modalities.audio.data import AudioCollator
    from multissl.modalities.text.data import TextCollator
    from multissl.modalities.vision.data import ImageCollator

    m = recipe.method
    if modality == "text":
        return TextCollator(recipe.mask, cfg, get_method(m.name).student_view(m))
    return (AudioCollator if modality == "audio" else ImageCollator)(recipe.mask, cfg, m.clones)


class StepClock:
    """A callback that notes the time at the end of every optimiser step."""

    def __init__(self, device: torch.device):
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                sync(device)
                clock.times.append(time.perf_counter())

        self.times: list[float] = []
        self.callback = _Callback()

    def median(self, warmup: int) -> float:
        gaps = np.diff(self.times)[warmup:]
        return float(statistics.median(gaps))


def bench_recipe(modality: str, name: str, args: argparse.Namespace, device: torch.device,
                 peak: float) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModel
    from transformers.trainer_utils import SaveStrategy

    from multissl.methods.data2vec import Data2Vec
    from multissl.modalities import get_modality
    from multissl.recipe import load_recipe
    from multissl.train import training_arguments
    from multissl.trainer import PretrainTrainer

    cuda = device.type == "cuda"
    overrides = ["--report_to", "none", "--save_steps", "1000000", "--logging_steps", "1000000",
                 "--precision", "bf16" if cuda else "fp32", "--compile", str(args.compile).lower()]
    if args.tiny:
        overrides += TINY["common"] + TINY[modality]
    if args.batch:
        overrides += ["--batch_size", str(args.batch)]
    recipe = load_recipe(ROOT / "recipes" / modality / f"{name}.yaml", overrides)
    adapter = recipe.adapter_config()
    if modality == "text":  # a RoBERTa-sized vocabulary when no tokenizer fills it in
        for key, value in (("vocab_size", 1000 if args.tiny else 50265), ("bos_token_id", 0), ("pad_token_id", 1),
                           ("eos_token_id", 2), ("mask_token_id", 3)):
            if getattr(adapter, key) == -1:
                setattr(adapter, key, value)
    if getattr(adapter, "mask_embedding", False) is None:
        adapter.mask_embedding = recipe.method.version == 1
    mod = get_modality(modality)(adapter)
    batch = recipe.train.batch_size
    steps = args.warmup + args.steps
    examples = synthetic(modality, adapter, batch * (steps + 1))
    collate = collator(modality, recipe, adapter)
    dtype = torch.bfloat16 if cuda else torch.float32

    torch.manual_seed(0)
    model = Data2Vec(mod, recipe.encoder, recipe.method).to(device)
    one = {k: (v.to(device) if torch.is_tensor(v) else {a: b.to(device) for a, b in v.items()})
           for k, v in collate(examples[:batch]).items()}
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=dtype, enabled=cuda):
        model(**one)["loss"].backward()
    model.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    if recipe.train.compile:  # after counting: the counter sees the eager operators
        model.compile_blocks()

    clock = StepClock(device)
    with tempfile.TemporaryDirectory() as tmp:
        targs = training_arguments(recipe, tmp)
        targs.max_steps, targs.save_strategy = steps, SaveStrategy.NO
        trainer = PretrainTrainer(model=model, args=targs, train_dataset=examples[batch:], data_collator=collate)
        from multissl.callbacks import EMACallback, NonFiniteGuard

        for cb in (NonFiniteGuard(trainer, 20), EMACallback(trainer), clock.callback):
            trainer.add_callback(cb)
        trainer.train()
    step = clock.median(args.warmup - 1)
    memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")

    # the peer: the exported HF encoder, plain forward+backward on the same unmasked batch
    hf = AutoModel.from_config(mod.hf_config(recipe.encoder)).to(device).train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=cuda)
    inputs = hf_inputs(modality, one["inputs"])
    times = []
    for i in range(steps):
        sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            loss = hf(**inputs).last_hidden_state.float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    hf_step = statistics.median(times)
    unit, amount = units(modality, adapter, batch)
    del model, hf, trainer, opt
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {"recipe": f"{modality}/{name}", "batch": batch, "ms": step * 1e3, "unit": unit, "rate": amount / step,
            "gflop": flops / 1e9, "tflops": flops / step / 1e12, "mfu": flops / step / peak,
            "hf_ms": hf_step * 1e3, "gib": memory}


def hf_inputs(modality: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if modality == "text":
        return {"input_ids": inputs["input_ids"], "attention_mask": (inputs["input_ids"] != 1).long()}
    return dict(inputs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modalities", nargs="+", default=["text", "audio", "vision"])
    p.add_argument("--recipes", nargs="+", default=["data2vec2-base"], help="recipe names under recipes/<modality>/")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=0, help="per-device batch (0: the recipe's)")
    p.add_argument("--compile", action="store_true", help="torch.compile the blocks (train.compile)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU check that everything runs)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="peak to divide by (0: measure it)")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = args.peak_tflops * 1e12 or measured_peak(device, dtype)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}; dense {str(dtype).split('.')[-1]} matmul peak "
          f"{'given' if args.peak_tflops else 'measured'}: {peak / 1e12:.1f} TFLOP/s; compile: {args.compile}")
    rows = [bench_recipe(m, r, args, device, peak) for r in args.recipes for m in args.modalities]
    print(f"{'recipe':<24} {'batch':>5} {'ms/step':>9} {'throughput':>20} {'GFLOP/step':>10} {'TFLOP/s':>8} "
          f"{'MFU':>6} {'HF enc ms':>9} {'x HF enc':>8} {'GiB':>6}")
    for r in rows:
        rate = f"{r['rate']:,.0f} {r['unit']}"
        print(f"{r['recipe']:<24} {r['batch']:>5} {r['ms']:>9.1f} {rate:>20} {r['gflop']:>10,.1f} {r['tflops']:>8.2f} "
              f"{r['mfu']:>6.1%} {r['hf_ms']:>9.1f} {r['ms'] / r['hf_ms']:>8.2f} {r['gib']:>6.1f}")
    print("goal: MFU >= 40% for the base recipes' training step: "
          + ", ".join(f"{r['recipe']} {'met' if r['mfu'] >= 0.4 else 'missed'}" for r in rows))


if __name__ == "__main__":
    main()
