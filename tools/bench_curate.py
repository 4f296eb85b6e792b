"""Curation benchmark (not a test): the vector index, embed throughput, and what selection buys.

1. Search: recall@10 of the approximate indexes (HNSW, IVF-PQ with re-ranking) against exact
   inner-product search, queries/s and build time, on ``--vectors`` (default 100,000) vectors: a
   mixture of 1,000 Gaussian clusters in 64 dimensions (held-out queries from the same mixture),
   indexed through ``build_index`` as ``multissl embed`` does.
2. Embed throughput: ``multissl embed`` (reading, checking, pooling, shards, index) against a plain loop
   over the HF model (preprocessor, forward, mean of the last layer; nothing written) on the same export
   and data, in items/s.
3. Selection: real labelled images (scikit-learn's handwritten digits, the held-out part that
   pretraining never saw: tools/make_images.py) and real recorded speech (klettres recordings, language
   labels: tools/heldout_data.py), embedded with multissl exports. For budgets of 50, 100 and 200 items
   chosen by each strategy (uncertainty: a random first fifth, then rounds of 10 by margin), a linear
   probe (standardised logistic regression) trained on the chosen items predicts (a) a stratified test
   split of 30% that no strategy may choose from (the same split for every strategy of a seed), and (b)
   every item not chosen ("the rest"; biased: a strategy that takes the hard items leaves an easier
   rest). Accuracy mean ± sd over 3 seeds (split, first centre, k-means and classifier seeds), and each
   strategy's gain over random on (a) in standard errors of the difference of the means
   (sqrt((sd_a^2 + sd_random^2) / seeds)).

    python tools/bench_curate.py --vision-export runs/bench/vision-export \\
        --audio-export runs/q-audio/audio-tiny-1/export --audio-labels runs/q-audio/data/speech/labels.csv

The exports: ``multissl pretrain vision/tiny --data runs/bench/curate/images/unlabelled`` (the digits
that are not held out) and ``multissl export``; for speech, tools/quality.py's audio/tiny run, which
pretrained on the klettres recordings that ``--audio-labels`` holds out.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRATEGIES = ("random", "kcenter", "kmeans", "uncertainty")
BUDGETS = (50, 100, 200)


def search_benchmark(out: Path, n: int, dim: int = 64, queries: int = 1000, seed: int = 0) -> list[dict]:
    from datasets import Dataset, Features, List, Value

    from multissl.curate.index import build_index, load_index

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    which = rng.integers(1000, size=n + queries)
    x = (centres[which] + 0.6 * rng.normal(size=(n + queries, dim))).astype(np.float32)
    base, q = x[:n], x[n:]
    folder = out / "vectors"
    shutil.rmtree(folder, ignore_errors=True)
    feats = Features({"id": Value("string"), "input": Value("string"), "embedding": List(Value("float32"), length=dim)})
    Dataset.from_dict({"id": [str(i) for i in range(n)], "input": [""] * n, "embedding": list(base)},
                      features=feats).save_to_disk(str(folder))
    rows, exact = [], None
    for kind in ("flat", "hnsw", "ivfpq"):
        t0 = time.perf_counter()
        build_index(folder, kind)
        build = time.perf_counter() - t0
        index = load_index(folder, n, dim)
        t0 = time.perf_counter()
        _, found = index.search(q, 10)
        batch_qps = len(q) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for v in q[:200]:
            index.search(v[None], 10)
        single_qps = 200 / (time.perf_counter() - t0)
        if exact is None:
            exact = found
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)]))
        rows.append({"index": kind, "vectors": n, "dim": dim, "build_s": build, "recall@10": recall,
                     "queries/s (batch of 1000)": batch_qps, "queries/s (one at a time)": single_qps})
    return rows


def plain_loop(export: Path, inputs: list[str], batch: int) -> float:
    """Items/s of the simplest loop over the HF model: read, preprocess, forward, mean of the last layer."""
    import torch
    from transformers import AutoModel

    from multissl.curate.embed import export_modality

    adapter = export_modality(export)
    model, pre = AutoModel.from_pretrained(str(export)).eval(), adapter.load_preprocessor(export)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(inputs), batch):
            chunk = inputs[i:i + batch]
            if adapter.item_view == "image":
                from PIL import Image

                enc = pre([Image.open(p).convert("RGB") for p in chunk], return_tensors="pt")
            else:
                from multissl.modalities.audio.data import read_audio

                rate = pre.sampling_rate
                enc = pre([read_audio(p, rate) for p in chunk], sampling_rate=rate, return_tensors="pt",
                          padding=True)
            model(**enc).last_hidden_state.mean(1).numpy()
    return len(inputs) / (time.perf_counter() - t0)


def probe_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int
                   ) -> tuple[float, float]:
    """(accuracy on ``test``, accuracy on every row not in ``train``) of a linear probe on ``train``."""
    from multissl.classifiers import linear_predict

    rest = np.setdiff1d(np.arange(len(y)), train)
    pred = dict(zip(rest.tolist(), linear_predict(x[train], y[train], x[rest], seed), strict=True))
    return (float(np.mean([pred[i] == y[i] for i in test])), float(np.mean([pred[i] == y[i] for i in rest])))


def chosen_rows(x: np.ndarray, y: np.ndarray, strategy: str, budget: int, seed: int, test: np.ndarray
                ) -> np.ndarray:
    """``budget`` rows chosen by ``strategy`` among the rows outside the test split."""
    from multissl.curate.select import choose, unit

    pool = np.setdiff1d(np.arange(len(y)), test)
    xu = unit(x[pool])
    if strategy != "uncertainty":
        return pool[choose(xu, budget, strategy, {}, seed=seed)[0]]
    rows = list(choose(xu, max(10, budget // 5), "random", {}, seed=seed)[0])
    while len(rows) < budget:  # label each round (here: reveal y), then ask for the next 10
        more, _ = choose(xu, min(10, budget - len(rows)), "uncertainty", {int(r): y[pool[r]] for r in rows},
                         seed=seed)
        rows += list(more)
    return pool[np.asarray(rows)]


def selection_table(name: str, x: np.ndarray, y: np.ndarray, seeds: int = 3) -> list[dict]:
    from sklearn.model_selection import train_test_split

    tests = [train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=s)[1] for s in range(seeds)]
    rows = []
    for budget in BUDGETS:
        acc = {s: [probe_accuracy(x, y, chosen_rows(x, y, s, budget, seed, tests[seed]), tests[seed], seed)
                   for seed in range(seeds)] for s in STRATEGIES}
        for s in STRATEGIES:
            a, rest = np.asarray([v[0] for v in acc[s]]), np.asarray([v[1] for v in acc[s]])
            r = np.asarray([v[0] for v in acc["random"]])
            se = float(np.sqrt((a.std(ddof=1) ** 2 + r.std(ddof=1) ** 2) / seeds))
            gain = float(a.mean() - r.mean())
            rows.append({"data": name, "budget": budget, "strategy": s, "accuracy": float(a.mean()),
                         "sd": float(a.std(ddof=1)), "rest accuracy": float(rest.mean()),
                         "rest sd": float(rest.std(ddof=1)), "gain": gain, "gain_se": se,
                         "gain/SE": gain / se if se > 0 else 0.0, "test items": len(tests[0]),
                         "pool": len(y) - len(tests[0])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench/curate")
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--vision-export", default=None)
    ap.add_argument("--audio-export", default=None)
    ap.add_argument("--audio-labels", default=None, help="labels.csv (path, label) of held-out klettres recordings")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from multissl.curate.embed import embed
    from multissl.curate.store import Embeddings

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}

    print(f"== search: {args.vectors:,} vectors, 64-d, 1,000 held-out queries", flush=True)
    results["search"] = search_benchmark(out, args.vectors)
    print(f"{'index':<6} {'build s':>8} {'recall@10':>9} {'q/s batch':>10} {'q/s single':>10}")
    for r in results["search"]:
        print(f"{r['index']:<6} {r['build_s']:>8.1f} {r['recall@10']:>9.4f} {r['queries/s (batch of 1000)']:>10.0f} "
              f"{r['queries/s (one at a time)']:>10.0f}")

    from tools import heldout_data

    datasets = {}
    vision_labels = heldout_data.digits(out / "images")[1]
    audio_labels = Path(args.audio_labels) if args.audio_labels else heldout_data.klettres(out / "speech")[1]
    datasets["images (digits)"] = (args.vision_export, vision_labels)
    datasets["speech (klettres)"] = (args.audio_export, audio_labels)
    results["embed"], results["selection"] = [], []
    for name, (export, labels) in datasets.items():
        if export is None:
            raise SystemExit(f"{name}: pass its export (see the docstring)")
        export = Path(export)
        emb = out / f"emb-{name.split()[0]}"
        shutil.rmtree(emb, ignore_errors=True)
        from multissl.curate.embed import export_modality
        from multissl.curate.items import list_items

        adapter = export_modality(export)
        batch = 32 if adapter.padding_exact else 1
        inputs = [i.input for i in list_items(str(labels), adapter.input_extensions)]
        plain = plain_loop(export, inputs[:200], batch)  # first: it pays the imports, outside its timing
        t0 = time.perf_counter()
        embed(export, str(labels), emb, make_map=False)
        embed_s = time.perf_counter() - t0
        e = Embeddings(emb)
        results["embed"].append({"data": name, "items": len(e), "multissl embed items/s": len(e) / embed_s,
                                 "plain HF loop items/s": plain, "plain loop items": min(200, len(inputs)),
                                 "batch": batch})
        from multissl.curate.atlas import draw_map

        draw_map(e, out / f"map-{name.split()[0]}.png")
        y = np.asarray([str(v) for v in e.data_labels()])
        print(f"== selection on {name}: {len(y)} labelled items, {len(set(y))} classes, export {export}", flush=True)
        results["selection"] += selection_table(name, e.vectors, y)

    print("\n== embed throughput (same export, same data; the plain loop writes nothing and its time excludes "
          "loading)")
    for r in results["embed"]:
        print(f"{r['data']:<18} {r['items']:>5} items  multissl embed {r['multissl embed items/s']:7.1f} items/s   "
              f"plain HF loop ({r['plain loop items']} items) {r['plain HF loop items/s']:7.1f} items/s  "
              f"(batch {r['batch']})")
    sizes = {r["data"]: (r["pool"], r["test items"]) for r in results["selection"]}
    print("\n== selection: linear probe on the chosen items; accuracy on a fixed 30% test split no strategy draws "
          "from, and on every item not chosen (mean ± sd, 3 seeds)")
    print(f"{'data':<18} {'budget':>6} {'strategy':<12} {'test accuracy':>16} {'vs random':>18} {'gain/SE':>8} "
          f"{'rest accuracy':>16}")
    for r in results["selection"]:
        vs = "-" if r["strategy"] == "random" else f"{r['gain']:+.4f} ± {r['gain_se']:.4f}"
        ratio = "-" if r["strategy"] == "random" else f"{r['gain/SE']:.1f}"
        print(f"{r['data']:<18} {r['budget']:>6} {r['strategy']:<12} {r['accuracy']:.4f} ± {r['sd']:.4f} {vs:>18} "
              f"{ratio:>8} {r['rest accuracy']:.4f} ± {r['rest sd']:.4f}")
    print("pool / test items: " + ", ".join(f"{k} {p} / {t}" for k, (p, t) in sizes.items()))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(f"\nmaps: {out / 'map-images.png'}, {out / 'map-speech.png'}; results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
