"""Does pretraining pay off? Every tiny recipe x seeds: pretrain at its default length on real data the
project does not ship, export, probe on held-out labelled data (5-fold, against the same architecture
at random init on the same folds), and beside each data2vec 2.0 run transformers' peer at the same
shape trained for the same CPU time on the same examples (RobertaForMaskedLM, Wav2Vec2ForPreTraining,
ViTMAEForPreTraining). Prints mean ± sd over seeds per row; every run's figures go to results.jsonl
as they come (a rerun with the same --out skips what is done).

    apt-get install wordnet-base klettres-data       # the held-out corpora (tools/heldout_data.py)
    python tools/quality.py [--recipes text/tiny text/tiny-v2 audio/tiny vision/tiny] [--seeds 0 1 2]
                            [--no-peers] [--out runs/quality] [--set KEY VALUE ...]

A benchmark, not a test: the full grid takes about two hours on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import heldout_data, peers  # noqa: E402

RECIPES = ["text/tiny", "text/tiny-v2", "audio/tiny", "vision/tiny"]
PROBES = {"text": ("text", "label"), "audio": ("path", "label"), "vision": ("path", "label")}


def datasets(out: Path, modalities: tuple[str, ...] = ("text", "audio", "vision")) -> dict[str, dict[str, Any]]:
    """Per modality: the pretraining data, the labelled probe data, and (text) a tokenizer trained on
    the pretraining corpus. Only ``modalities``' data is made."""
    from multissl.tokenizer import train_tokenizer

    text, speech, vision = out / "text", out / "speech", out / "vision"
    if "text" in modalities and not (text / "probe.jsonl").exists():
        heldout_data.wordnet_glosses(text)
    if "audio" in modalities and not (speech / "labels.csv").exists():
        heldout_data.klettres(speech)
    if "vision" in modalities and not (vision / "labelled" / "labels.csv").exists():
        heldout_data.digits(vision)
    if "text" in modalities and not (text / "tokenizer" / "tokenizer_config.json").exists():
        train_tokenizer([text / "corpus.txt"], text / "tokenizer", kind="bpe", vocab_size=8000)
    if "text" in modalities and not (text / "pretrain-labels.jsonl").exists():
        heldout_data.wordnet_glosses(text)  # written by newer versions of these makers only
    if "vision" in modalities and not (vision / "pretrain-labels.csv").exists():
        heldout_data.digits(vision)
    return {"text": {"data": text / "corpus.txt", "probe": text / "probe.jsonl", "tokenizer": text / "tokenizer",
                     "labelled": text / "pretrain-labels.jsonl"},
            "audio": {"data": speech / "pretrain.csv", "probe": speech / "labels.csv"},
            "vision": {"data": vision / "unlabelled", "probe": vision / "labelled" / "labels.csv",
                       "labelled": vision / "pretrain-labels.csv"}}


def probe_key(features: str) -> str | None:
    """The results.jsonl name of a probe row: linear, knn, knn_weighted (DINO's, at any temperature),
    weighted (layer-weighted), lowshot1 / lowshot10 (the linear probe on 1% / 10% of the labels).

    >>> [probe_key(f) for f in ("last layer", "20-NN", "20-NN T=0.07", "linear 10%", "-")]
    ['linear', 'knn', 'knn_weighted', 'lowshot10', None]
    """
    if features.startswith("20-NN T="):
        return "knn_weighted"
    if features.startswith("linear ") and features.endswith("%"):
        return "lowshot" + features.split()[1].rstrip("%")
    return {"last layer": "linear", "20-NN": "knn", "layer-weighted": "weighted"}.get(features)


def probe_row(model_dir: Path, modality: str, data: dict[str, Any], seed: int, protocols: str | None = None
              ) -> dict[str, float]:
    """Every probe accuracy (and its SE; the gain over random init and its paired SE) by
    :func:`probe_key`; ``protocols`` as ``multissl probe --protocols`` (default: its default)."""
    from multissl.probe import probe

    input_column, label_column = PROBES[modality]
    res = probe(model_dir, data["probe"], label_column=label_column, input_column=input_column, folds=5, seed=seed,
                **({"protocols": protocols} if protocols else {}))
    row: dict[str, float] = {}
    for r in res:
        key = probe_key(r["features"])
        if key is None:
            continue
        prefix = "" if r["model"] == "pretrained" else "random_"
        row[prefix + key] = r["accuracy"]
        row[prefix + key + "_se"] = r["se"]
        if "gain" in r:
            row[key + "_gain"], row[key + "_gain_se"] = r["gain"], r["gain_se"]
    return row


def last_log(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else {}


def run_recipe(name: str, seed: int, data: dict[str, Any], out: Path, extra: list[str],
               clock: peers.TrainingClock | None = None, protocols: str | None = None) -> tuple[dict, Any]:
    """Pretrain, export and probe one recipe at one seed; also returns the recipe (for the peer).
    ``clock``: the training clock (a budget stops the run when its CPU seconds are spent);
    ``protocols``: the probes to run (default: ``multissl probe``'s)."""
    from multissl.export.hf import export
    from multissl.methods import get_method
    from multissl.recipe import load_recipe
    from multissl.train import pretrain

    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    labelled = get_method(recipe.method.name).labels  # trains on labels: the pretraining part's own labels
    if labelled and "labelled" not in data:
        raise SystemExit(f"{name}: no labelled pretraining data for {recipe.modality}")
    args = ["--data", str(data["labelled"] if labelled else data["data"]), "--output_dir", str(out / "run"),
            "--seed", str(seed), "--report_to", "none", *(["--label_column", "label"] if labelled else []), *extra]
    if "tokenizer" in data:
        args += ["--tokenizer", str(data["tokenizer"])]
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml", args)
    clock = clock or peers.TrainingClock()
    run_dir = pretrain(recipe, overwrite=True, callbacks=[clock])
    model_dir = export(run_dir, out / "export", overwrite=True)
    logged = last_log(run_dir)
    row = {"method": f"multissl {name}", "seed": seed, "steps": clock.steps, "seconds": round(clock.seconds, 1),
           "wall_seconds": round(clock.wall_seconds, 1),
           **{k: logged.get(k) for k in ("teacher_init_share", "target_pos_share", "student_rank", "teacher_rank")},
           **probe_row(model_dir, recipe.modality, data, seed, protocols)}
    return row, recipe


def run_peer(recipe, seed: int, budget: float, data: dict[str, Any], out: Path) -> dict:
    from multissl.train import build_model

    name, train = peers.PEERS[recipe.modality]
    _, _, dataset, _, preprocessor, _ = build_model(recipe)
    model_dir, clock = train(recipe, dataset, preprocessor, out, seed, budget)
    return {"method": name, "seed": seed, "steps": clock.steps, "seconds": round(clock.seconds, 1),
           "wall_seconds": round(clock.wall_seconds, 1),
            **probe_row(model_dir, recipe.modality, data, seed)}


def summary(rows: list[dict]) -> str:
    from multissl.classifiers import mean_sd

    def cell(values: list[float]) -> str:
        m, sd = mean_sd(values)
        return f"{m:.3f} ± {sd:.3f}"

    lines = ["| method | seeds | steps | seconds | linear | random init | gain (min gain/SE) | k-NN | k-NN gain |"
             " teacher init share | target position share |", "|" + "---|" * 11]
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        ratios = [r["linear_gain"] / r["linear_gain_se"] for r in rs if r.get("linear_gain_se")]
        share = [r["teacher_init_share"] for r in rs if r.get("teacher_init_share") is not None]
        pos = [r["target_pos_share"] for r in rs if r.get("target_pos_share") is not None]
        steps, seconds = (sum(r[k] for r in rs) / len(rs) for k in ("steps", "seconds"))
        lines.append(f"| {method} | {len(rs)} | {steps:.0f} | {seconds:.0f} | {cell([r['linear'] for r in rs])} | "
                     f"{cell([r['random_linear'] for r in rs])} | {cell([r['linear_gain'] for r in rs])} "
                     f"({min(ratios) if ratios else 0:.1f}) | {cell([r['knn'] for r in rs])} | "
                     f"{cell([r['knn_gain'] for r in rs])} | "
                     f"{cell(share) if share else '-'} | {cell(pos) if pos else '-'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=RECIPES)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--no-peers", action="store_true", help="skip the transformers peers")
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--data", default=None, help="where the held-out corpora are (default: OUT/data)")
    p.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="a recipe override for every run, e.g. --set max_steps 300")
    p.add_argument("--tag", default="", help="a name for this variant in the results")
    args = p.parse_args()
    out = Path(args.out)
    data = datasets(Path(args.data) if args.data else out / "data")
    extra = [x for kv in args.set for x in (f"--{kv[0]}", kv[1])]
    results = out / "results.jsonl"
    done = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    seen = {(r["method"], r["seed"], r.get("tag", "")) for r in done}
    for name in args.recipes:
        modality = name.split("/")[0]
        for seed in args.seeds:
            key = f"{name.replace('/', '-')}{'-' + args.tag if args.tag else ''}-{seed}"
            recipe = None
            if (f"multissl {name}", seed, args.tag) not in seen:
                row, recipe = run_recipe(name, seed, data[modality], out / key, extra)
                row["tag"] = args.tag
                done.append(row)
                with open(results, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
            peer = peers.PEERS[modality][0]
            v2 = name in ("text/tiny-v2", "audio/tiny", "vision/tiny")
            if v2 and not args.no_peers and (peer, seed, args.tag) not in seen:
                ours = next(r for r in done if r["method"] == f"multissl {name}" and r["seed"] == seed
                            and r.get("tag", "") == args.tag)
                if recipe is None:
                    from multissl.recipe import load_recipe

                    recipe = load_recipe(out / key / "run" / "recipe.yaml", ["--output_dir", str(out / key / "peer")])
                row = run_peer(recipe, seed, ours["seconds"], data[modality], out / f"{key}-peer")
                row["tag"] = args.tag
                done.append(row)
                with open(results, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    rows = [r for r in done if r.get("tag", "") == args.tag]
    print(f"\n{summary(rows)}")


if __name__ == "__main__":
    main()
