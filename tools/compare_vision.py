"""Equal CPU wall-clock for multissl data2vec 2.0 and transformers' MAE (``ViTMAEForPreTraining``,
75% masked, normalised-pixel loss, MAE's own initialisation restored), on the same unlabelled
handwritten digits, encoder shape (recipes/vision/tiny.yaml), training crop, batch and learning rate;
then the same probes (linear, 20-NN, layer-weighted) on held-out labelled digits that neither saw.

    python tools/compare_vision.py [--budget 300] [--seeds 0 1] [--out runs/compare_vision]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.bench_vision import mae_config, mae_init  # noqa: E402
from tools.compare_text import WallClock, peer_arguments  # noqa: E402


def main() -> None:
    from transformers import Trainer, ViTMAEForPreTraining

    from multissl.config import load_recipe
    from multissl.export.hf import export
    from multissl.probe import accuracy, probe
    from multissl.train import build_model, pretrain
    from tools.make_images import digits

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=300.0, help="training seconds per method and seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="runs/compare_vision")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    unlabelled, labelled = digits(out / "digits")
    common = ["--data", str(unlabelled), "--report_to", "none", "--schedule", "constant_with_warmup",
              "--max_steps", "100000", "--save_steps", "100000"]
    results = []
    for seed in args.seeds:
        recipe = load_recipe(ROOT / "recipes/vision/tiny.yaml",
                             [*common, "--seed", str(seed), "--output_dir", str(out / f"d2v2-{seed}")])
        clock = WallClock(args.budget)
        runs = [("multissl data2vec 2.0", export(pretrain(recipe, callbacks=[clock]), out / f"d2v2-{seed}-export"),
                 clock.steps)]

        _, _, dataset, _, proc = build_model(load_recipe(ROOT / "recipes/vision/tiny.yaml",
                                                         [*common, "--output_dir", "unused"]))
        a, t = recipe.adapter, recipe.train
        torch.manual_seed(seed)
        mae = ViTMAEForPreTraining(mae_config(recipe.encoder, a["image_size"], a["patch_size"]))
        mae_init(mae)
        clock = WallClock(args.budget)
        trainer = Trainer(
            model=mae, train_dataset=dataset,
            data_collator=lambda ex: {"pixel_values": torch.stack([e["pixel_values"] for e in ex])},
            args=peer_arguments(t, out / f"mae-{seed}", seed, remove_unused_columns=False),
            callbacks=[clock])
        trainer.train()
        mae_dir = out / f"mae-{seed}-export"
        mae.vit.config.mask_ratio = 0.0  # frozen features of every patch (order is shuffled; pooling ignores it)
        mae.vit.save_pretrained(mae_dir)
        proc.save_pretrained(mae_dir)
        runs.append(("HF ViTMAEForPreTraining", mae_dir, clock.steps))

        for name, model_dir, steps in runs:
            res = probe(model_dir, labelled, label_column="label", input_column="path", test_size=0.25, seed=seed)
            results.append((name, seed, steps, accuracy(res, "pretrained"), accuracy(res, "pretrained", "20-NN"),
                            accuracy(res, "pretrained", "layer-weighted"), accuracy(res, "random init"),
                            accuracy(res, "majority class")))

    print(f"\nequal wall-clock: {args.budget:.0f} s of training per method and seed, {torch.get_num_threads()} "
          "threads; probe: which digit, on held-out handwritten digits (mean-pooled patches)")
    print(f"{'method':<26} {'seed':>4} {'updates':>8} {'linear':>7} {'20-NN':>7} {'weighted':>9} {'rnd linear':>11} "
          f"{'majority':>9}")
    for name, seed, steps, *accs in results:
        print(f"{name:<26} {seed:>4} {steps:>8} " + " ".join(
            f"{v:>{w}.4f}" for v, w in zip(accs, (7, 7, 9, 11, 9), strict=True)))
    for name in ("multissl data2vec 2.0", "HF ViTMAEForPreTraining"):
        rows = [r for r in results if r[0] == name]
        print(f"mean {name}: linear {np.mean([r[3] for r in rows]):.4f}, 20-NN {np.mean([r[4] for r in rows]):.4f} "
              f"over {len(rows)} seed(s)")


if __name__ == "__main__":
    main()
