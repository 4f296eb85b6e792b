"""The method table: every self-supervised method multissl ships, at the tiny shape and the same training
budget in CPU seconds, pretrained on real unlabelled data and probed on held-out labelled data, as the
tables of solo-learn / lightly / VISSL report them: DINO's weighted k-NN, the linear probe, the linear
probe on 1% and 10% of the labels (5-fold, each with the gain over the same architecture at random init
on the same folds), steps, steps per CPU second (the rows also keep steps/s by the wall clock, which other
processes on the machine slow) and peak memory; mean ± sd over seeds.

- vision: scikit-learn's handwritten digits (tools/heldout_data.py): pretrain on the unlabelled 70%,
  probe on the held-out 30%; every ``vision/tiny`` and ``vision/*-tiny`` recipe.
- speech: klettres recordings (``apt-get install klettres-data``), the language as label; every
  ``audio/tiny`` and ``audio/*-tiny`` recipe (the methods that apply to speech).

The methods are the shipped recipes (``multissl recipes``), so a method added later appears without
editing this tool. Equal budget: each run stops once its process has spent ``--budget`` CPU seconds in
training (tools/peers.py's TrainingClock, a Trainer callback), whatever its step count; the schedules
(learning rate, EMA ramps) are laid out over ``--max-steps`` updates, far more than any budget reaches,
so every method trains near its post-warm-up values, as tools/peers.py's peers do. Each run is its own
process, so that its CPU time and peak memory are its own. Rows go to OUT/results.jsonl as they come (a
rerun with the same --out skips what is done); the table is printed and saved as OUT/method_table.md,
the bar chart as OUT/method_table.png.

    python tools/method_table.py [--modalities vision audio] [--methods vision/dino-tiny ...]
                                 [--seeds 0 1 2] [--budget 600] [--out runs/method_table]

A benchmark, not a test: at the default budget, 3 seeds of a dozen methods take hours on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import peers, quality  # noqa: E402

MODALITIES = ("vision", "audio")
PROTOCOLS = "linear,knn,lowshot"
COLUMNS = {"knn_weighted": "k-NN (T=0.07)", "linear": "linear", "lowshot1": "linear 1%", "lowshot10": "linear 10%"}
"""The probe figures of the table and chart (tools/quality.py's names) and their headings."""


def method_recipes(modalities: tuple[str, ...] = MODALITIES) -> list[str]:
    """The shipped tiny recipes of ``modalities`` (``vision/tiny``, ``vision/dino-tiny``, ...), never a base
    recipe.

    >>> "vision/dino-tiny" in method_recipes() and "vision/dino-base" not in method_recipes()
    True
    """
    from multissl.recipe import shipped_recipes

    return [name for name in shipped_recipes() if name.split("/")[0] in modalities
            and (name.split("/")[1] == "tiny" or name.endswith("-tiny"))]


class BudgetClock(peers.TrainingClock):
    """The training clock, and the process's peak resident memory (and the GPU's, where there is one)
    when training ends."""

    peak_mb: float = 0.0
    peak_gpu_mb: float | None = None

    def on_train_end(self, args, state, control, **kwargs):
        import torch

        self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        if torch.cuda.is_available():
            self.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20


def run_one(name: str, seed: int, budget: float, max_steps: int, data_dir: Path, out: Path) -> dict[str, Any]:
    """Pretrain ``name`` for ``budget`` CPU seconds at ``seed``, export, probe; its results.jsonl row."""
    modality = name.split("/")[0]
    data = quality.datasets(data_dir, (modality,))[modality]
    clock = BudgetClock(budget)
    extra = ["--max_steps", str(max_steps), "--save_steps", str(max_steps)]
    row, _ = quality.run_recipe(name, seed, data, out, extra, clock=clock, protocols=PROTOCOLS)
    row.update(recipe=name, modality=modality, budget=budget, peak_mb=round(clock.peak_mb, 1),
               steps_per_s=round(clock.steps / clock.wall_seconds, 2) if clock.wall_seconds else 0.0)
    if clock.peak_gpu_mb is not None:
        row["peak_gpu_mb"] = round(clock.peak_gpu_mb, 1)
    return row


def cell(values: list[float], digits: int = 3) -> str:
    """mean ± sd over seeds (the sd is 0 for one seed).

    >>> cell([0.5, 0.7])
    '0.600 ± 0.141'
    """
    from multissl.classifiers import mean_sd

    m, sd = mean_sd(values)
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table: one row per recipe, and per modality the random-init rows (the same tiny
    architecture untrained, averaged over every run's folds)."""
    lines = []
    for modality in dict.fromkeys(r["modality"] for r in rows):
        rs = [r for r in rows if r["modality"] == modality]
        lines += [f"**{modality}** ({rs[0]['budget']:g} CPU-s of training per run; mean ± sd over seeds; "
                  "gain: over random init, with the smallest gain / paired SE over seeds)", "",
                  "| method | recipe | seeds | steps | steps per CPU-s | peak MB | " + " | ".join(COLUMNS.values())
                  + " | k-NN gain (min gain/SE) |", "|" + "---|" * (7 + len(COLUMNS))]
        for recipe in dict.fromkeys(r["recipe"] for r in rs):
            runs = [r for r in rs if r["recipe"] == recipe]
            ratios = [r["knn_weighted_gain"] / r["knn_weighted_gain_se"] for r in runs if r.get("knn_weighted_gain_se")]
            lines.append(f"| {runs[0]['method_name']} | {recipe} | {len(runs)} | {cell([r['steps'] for r in runs], 0)} "
                         f"| {cell([r['steps'] / r['seconds'] for r in runs], 2)} "
                         f"| {cell([r['peak_mb'] for r in runs], 0)} | "
                         + " | ".join(cell([r[key] for r in runs]) for key in COLUMNS)
                         + f" | {cell([r['knn_weighted_gain'] for r in runs])} ({min(ratios) if ratios else 0:.1f}) |")
        lines.append(f"| random init | - | {len(rs)} | - | - | - | "
                     + " | ".join(cell([r['random_' + key] for r in rs]) for key in COLUMNS) + " | - |")
        lines.append("")
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars, one panel per modality: each method's probe accuracies (mean, sd over seeds as error
    bars), random init as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    modalities = list(dict.fromkeys(r["modality"] for r in rows))
    fig, axes = plt.subplots(len(modalities), 1, figsize=(12, 4.5 * len(modalities)), squeeze=False)
    width = 0.8 / len(COLUMNS)
    for ax, modality in zip(axes[:, 0], modalities, strict=True):
        rs = [r for r in rows if r["modality"] == modality]
        recipes = list(dict.fromkeys(r["recipe"] for r in rs))
        for j, (key, heading) in enumerate(COLUMNS.items()):
            values = [[r[key] for r in rs if r["recipe"] == recipe] for recipe in recipes]
            bars = ax.bar(np.arange(len(recipes)) + (j - (len(COLUMNS) - 1) / 2) * width,
                          [np.mean(v) for v in values], width, yerr=[np.std(v, ddof=1) if len(v) > 1 else 0
                                                                     for v in values], label=heading, capsize=2)
            ax.axhline(np.mean([r["random_" + key] for r in rs]), color=bars.patches[0].get_facecolor(),
                       linestyle="--", linewidth=1)
        ax.set_xticks(np.arange(len(recipes)), [recipe.split("/")[1] for recipe in recipes], rotation=20)
        ax.set_ylabel("held-out accuracy")
        ax.set_ylim(0, 1.12)  # room for the legend above the bars
        ax.set_title(f"{modality}: {rs[0]['budget']:g} CPU-s of pretraining per run (dashed: random init)")
        ax.legend(ncol=len(COLUMNS), fontsize="small", loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    p.add_argument("--methods", nargs="+", default=None,
                   help="recipes to run (default: every shipped tiny recipe of --modalities)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=float, default=600.0, help="CPU seconds of training per run (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=100000,
                   help="updates the schedules are laid out over; the budget ends every run long before")
    p.add_argument("--out", default="runs/method_table")
    p.add_argument("--data", default=None, help="where the held-out corpora are (default: OUT/data)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # one run, in its own process
    args = p.parse_args()
    out = Path(args.out)
    data_dir = Path(args.data) if args.data else out / "data"
    if not args.budget > 0:
        raise SystemExit(f"--budget {args.budget}: needs a positive number of CPU seconds")
    if args.one is not None:
        row = run_one(args.one, args.seeds[0], args.budget, args.max_steps, data_dir,
                      out / f"{args.one.replace('/', '-')}-{args.seeds[0]}")
        print("ROW " + json.dumps(row), flush=True)
        return

    known = method_recipes(tuple(args.modalities))
    methods = args.methods or known
    for name in methods:
        if name not in known:
            raise SystemExit(f"--methods {name}: not a shipped tiny recipe of {', '.join(args.modalities)}; "
                             f"known: {', '.join(known)}")
    quality.datasets(data_dir, tuple(dict.fromkeys(m.split("/")[0] for m in methods)))  # once, before the runs
    results = out / "results.jsonl"
    done = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    for name in methods:
        for seed in args.seeds:
            if any(r["recipe"] == name and r["seed"] == seed and r["budget"] == args.budget for r in done):
                continue
            cmd = [sys.executable, __file__, "--one", name, "--seeds", str(seed), "--budget", str(args.budget),
                   "--max-steps", str(args.max_steps), "--out", str(out), "--data", str(data_dir)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("ROW ")]
            if proc.returncode != 0 or not lines:
                print(f"{name} seed {seed}: failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
                continue
            row = json.loads(lines[-1][4:])
            from multissl.recipe import recipe_info

            row["method_name"] = recipe_info(name).method
            done.append(row)
            with open(results, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    rows = [r for r in done if r["recipe"] in methods and r["budget"] == args.budget and r["seed"] in args.seeds]
    if not rows:
        raise SystemExit("no run finished")
    text = table(rows)
    print(f"\n{text}")
    (out / "method_table.md").write_text(text + "\n")
    chart(rows, out / "method_table.png")
    print(f"saved {out / 'method_table.md'} and {out / 'method_table.png'}")


if __name__ == "__main__":
    main()
