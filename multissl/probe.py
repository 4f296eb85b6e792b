"""Probes: how much a frozen encoder's features know about a labelled task, with error bars, next to
a baseline on the same folds: the same architecture at random initialisation (a fresh draw per seed),
or another export. Every row is predicted once by k-fold cross-validation; each accuracy comes with
its standard error and each gain over the baseline with the standard error of the paired
difference. With several seeds (fold splits, random inits, classifier seeds) each figure is also
given as mean ± sd over the seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from multissl.classifiers import (
    LayerWeightedProbe,
    accuracy_se,
    cross_val_predict,
    folds_of,
    knn_predict,
    linear_predict,
    mean_sd,
    paired_gain,
)
from multissl.features import load_features_backend


def read_table(path: str | Path, columns: list[str], max_samples: int = 0, seed: int = 0):
    """A labelled file (JSON lines, CSV, parquet; optionally .gz) as a pandas DataFrame with ``columns``."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--data: {p}: no such file")
    name = p.name.removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        df = pd.read_json(p, lines=name.endswith(".jsonl"))
    elif name.endswith((".csv", ".tsv")):
        df = pd.read_csv(p, sep="\t" if name.endswith(".tsv") else ",")
    elif name.endswith(".parquet"):
        df = pd.read_parquet(p)
    else:
        raise ValueError(f"--data: {p}: expected .jsonl, .json, .csv, .tsv or .parquet")
    for col in columns:
        if col not in df.columns:
            raise KeyError(f"--data: {p}: no column {col!r} (columns: {', '.join(map(str, df.columns))})")
    df = df[columns].dropna()
    if max_samples and len(df) > max_samples:
        df = df.sample(n=max_samples, random_state=seed)
    return df


def read_labelled(data: str | Path, input_column: str, label_column: str, max_samples: int = 0, seed: int = 0):
    """A labelled table (see :func:`read_table`), or a folder with one sub-folder per class (the
    sub-folder name is the label). Relative paths in a table are resolved against its folder."""
    import pandas as pd

    from multissl.modalities import MODALITIES

    p = Path(data)
    if p.is_dir():
        exts = tuple(e for adapter in MODALITIES.values() for e in adapter.input_extensions)
        rows = [(str(f), f.parent.name) for f in sorted(p.glob("*/*")) if f.suffix.lower() in exts]
        if not rows:
            raise FileNotFoundError(f"--data: {p}: no class sub-folders with audio or image files")
        df = pd.DataFrame(rows, columns=[input_column, label_column])
        return df.sample(n=max_samples, random_state=seed) if max_samples and len(df) > max_samples else df
    df = read_table(p, [input_column, label_column], max_samples, seed)
    first = str(df[input_column].iloc[0]) if len(df) else ""
    if first and not Path(first).is_absolute() and (p.parent / first).exists():
        df[input_column] = [str(p.parent / v) for v in df[input_column]]
    return df


def _scores(x: np.ndarray, labels: np.ndarray, folds: list, seed: int, k: int) -> dict[str, tuple[np.ndarray, Any]]:
    """Per feature kind: (0/1 correctness of every row, the top layer of the layer-weighted probe)."""
    weighted = LayerWeightedProbe()
    correct: dict[str, tuple[np.ndarray, Any]] = {}
    last = x[:, -1]
    correct["last layer"] = (cross_val_predict(linear_predict, last, labels, folds, seed) == labels, None)
    knn = cross_val_predict(lambda a, b, c, s: knn_predict(a, b, c, s, k), last, labels, folds, seed)
    correct[f"{k}-NN"] = (knn == labels, None)
    correct["layer-weighted"] = (cross_val_predict(weighted, x, labels, folds, seed) == labels,
                                 int(weighted.weights.argmax()))
    return correct


STS_COLUMNS = ["sentence1", "sentence2", "score"]


def spearman_se(rho: float, n: int) -> float:
    """The standard error of a Spearman correlation ``rho`` over ``n`` pairs: Fisher's z = atanh(rho) has a
    variance of about 1.06 / (n - 3) for Spearman's rho (Fieller, Hartley and Pearson 1957), carried back
    to rho by the delta method (d rho / d z = 1 - rho^2); 0 at |rho| = 1.

    >>> round(spearman_se(0.5, 103), 4), spearman_se(1.0, 50)
    (0.0772, 0.0)
    """
    return float((1 - rho * rho) * np.sqrt(1.06 / max(n - 3, 1)))


def sts_scores(features: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of the two sentences of each pair: ``features`` (sentences, D), ``pairs`` (P, 2)
    indices into it."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return np.einsum("pd,pd->p", unit[pairs[:, 0]], unit[pairs[:, 1]])


def sts_rows(model_dir: str | Path, sts: str | Path, seeds: int = 1, seed: int = 0,
             baseline: str | Path | None = None, pool: str = "mean", bootstrap: int = 1000) -> list[dict[str, Any]]:
    """Sentence similarity: Spearman's rho between the cosine similarities of the sentences' pooled
    last-layer embeddings and the human ``score`` of each pair (a table with columns sentence1,
    sentence2, score), for the model and the baseline (random init, a fresh draw per seed, or the
    export ``baseline``), each with its standard error (:func:`spearman_se`), and the gain with the
    standard error of a paired bootstrap over pairs. Rows as :func:`probe`'s (``accuracy`` holds rho)."""
    from scipy.stats import spearmanr
    from transformers import AutoConfig, AutoModel

    df = read_table(sts, STS_COLUMNS)
    if len(df) < 4:
        raise ValueError(f"--sts: {sts}: needs at least 4 scored pairs, found {len(df)}")
    sentences = sorted(set(df["sentence1"].astype(str)) | set(df["sentence2"].astype(str)))
    where = {t: i for i, t in enumerate(sentences)}
    pairs = np.array([[where[str(a)], where[str(b)]] for a, b in zip(df["sentence1"], df["sentence2"], strict=True)])
    human = df["score"].astype(float).to_numpy()

    def last_layer(folder: str | Path, model: torch.nn.Module | None = None) -> np.ndarray:
        preprocessor, featurize = load_features_backend(folder, pool)
        return featurize(model if model is not None else AutoModel.from_pretrained(folder).eval(), preprocessor,
                         sentences)[:, -1]

    def rho(sims: np.ndarray, rows: np.ndarray | slice = slice(None)) -> float:
        value = spearmanr(sims[rows], human[rows]).statistic
        return float(value) if np.isfinite(value) else 0.0  # constant similarities: no ranking

    ours = sts_scores(last_layer(model_dir), pairs)
    fixed = sts_scores(last_layer(baseline), pairs) if baseline is not None else None
    base_name = Path(baseline).name if baseline is not None else "random init"
    per_seed: dict[str, list[dict[str, float]]] = {"pretrained": [], base_name: []}
    n = len(human)
    for s in range(seed, seed + seeds):
        if fixed is None:
            torch.manual_seed(s)
            random_model = AutoModel.from_config(AutoConfig.from_pretrained(model_dir)).eval()
            theirs = sts_scores(last_layer(model_dir, random_model), pairs)
        else:
            theirs = fixed
        a, b = rho(ours), rho(theirs)
        rng = np.random.default_rng(s)
        resampled = [rng.integers(0, n, n) for _ in range(bootstrap)]
        gains = np.array([rho(ours, r) - rho(theirs, r) for r in resampled])
        per_seed["pretrained"].append({"accuracy": a, "se": spearman_se(a, n), "gain": a - b,
                                       "gain_se": float(gains.std(ddof=1))})
        per_seed[base_name].append({"accuracy": b, "se": spearman_se(b, n)})
    rows = []
    for model, runs in per_seed.items():
        row: dict[str, Any] = {"model": model, "features": "STS Spearman", "n": n, "seeds": seeds}
        row["accuracy"], row["sd"] = mean_sd([r["accuracy"] for r in runs])
        row["se"] = float(np.mean([r["se"] for r in runs]))
        if "gain" in runs[0]:
            row["gain"], row["gain_sd"] = mean_sd([r["gain"] for r in runs])
            row["gain_se"] = float(np.mean([r["gain_se"] for r in runs]))
            row["gain_ratios"] = [r["gain"] / r["gain_se"] if r["gain_se"] else 0.0 for r in runs]
        rows.append(row)
    return rows


def probe(model_dir: str | Path, data: str | Path, label_column: str, input_column: str = "text", folds: int = 5,
          seeds: int = 1, seed: int = 0, baseline: str | Path | None = None, max_samples: int = 0,
          pool: str = "mean", k: int = 20, sts: str | Path | None = None) -> list[dict[str, Any]]:
    """Cross-validated probe accuracies of ``model_dir`` and of the baseline (the same architecture at
    random init, or the export ``baseline``), each with the last layer pooled (logistic regression,
    and a k-NN vote by cosine similarity) and with a learned weighted sum of all layers; plus the
    majority class. ``seeds`` repeats everything with seeds ``seed, seed + 1, ...``. ``pool``: mean of
    the tokens or patches, or the CLS token (text: the first token). ``sts``: a table of scored sentence
    pairs (sentence1, sentence2, score); adds the sentence-similarity rows of :func:`sts_rows`.

    Each row: ``model``, ``features``, ``accuracy`` (mean over seeds), ``se`` (its standard error,
    averaged over seeds), ``sd`` (over seeds), ``gain`` / ``gain_se`` / ``gain_sd`` (the model over the
    baseline, paired on the same folds), ``n`` rows, ``seeds``.

    >>> probe("out/t1", "labelled.jsonl", label_column="label", seeds=3)  # doctest: +SKIP
    """
    from transformers import AutoConfig, AutoModel

    df = read_labelled(data, input_column, label_column, max_samples, seed)
    labels = df[label_column].astype(str).to_numpy()
    if len(set(labels)) < 2:
        raise ValueError(f"--label-column {label_column}: needs at least two classes, found {len(set(labels))}")
    if not 2 <= folds <= len(labels):
        raise ValueError(f"--folds {folds}: needs 2 to {len(labels)} (the number of labelled rows)")
    inputs = df[input_column].tolist()
    preprocessor, featurize = load_features_backend(model_dir, pool)
    features = featurize(AutoModel.from_pretrained(model_dir).eval(), preprocessor, inputs)
    fixed_baseline = None
    if baseline is not None:
        base_pre, base_featurize = load_features_backend(baseline, pool)
        fixed_baseline = base_featurize(AutoModel.from_pretrained(baseline).eval(), base_pre, inputs)
    base_name = Path(baseline).name if baseline is not None else "random init"

    per_seed: dict[tuple[str, str], list[dict[str, float]]] = {}
    for s in range(seed, seed + seeds):
        split = folds_of(labels, folds, s)
        if fixed_baseline is None:
            torch.manual_seed(s)
            random_model = AutoModel.from_config(AutoConfig.from_pretrained(model_dir)).eval()
            base_x = featurize(random_model, preprocessor, inputs)
        else:
            base_x = fixed_baseline
        ours, theirs = _scores(features, labels, split, s, k), _scores(base_x, labels, split, s, k)
        for kind, (c, top) in ours.items():
            acc, se = accuracy_se(c)
            gain, gain_se = paired_gain(c, theirs[kind][0])
            per_seed.setdefault(("pretrained", kind), []).append(
                {"accuracy": acc, "se": se, "gain": gain, "gain_se": gain_se, "top_layer": top})
        for kind, (c, top) in theirs.items():
            acc, se = accuracy_se(c)
            per_seed.setdefault((base_name, kind), []).append({"accuracy": acc, "se": se, "top_layer": top})
        values, counts = np.unique(labels, return_counts=True)
        acc, se = accuracy_se(labels == values[counts.argmax()])
        per_seed.setdefault(("majority class", "-"), []).append({"accuracy": acc, "se": se, "top_layer": None})

    results = []
    for (model, kind), runs in per_seed.items():
        row: dict[str, Any] = {"model": model, "features": kind, "n": len(labels), "seeds": seeds}
        row["accuracy"], row["sd"] = mean_sd([r["accuracy"] for r in runs])
        row["se"] = float(np.mean([r["se"] for r in runs]))
        if "gain" in runs[0]:
            row["gain"], row["gain_sd"] = mean_sd([r["gain"] for r in runs])
            row["gain_se"] = float(np.mean([r["gain_se"] for r in runs]))
            row["gain_ratios"] = [r["gain"] / r["gain_se"] if r["gain_se"] else 0.0 for r in runs]
        if runs[0]["top_layer"] is not None:
            row["top_layer"] = int(np.bincount([r["top_layer"] for r in runs]).argmax())
        results.append(row)
    if sts is not None:
        results += sts_rows(model_dir, sts, seeds, seed, baseline, pool)
    return results


def accuracy(results: list[dict[str, Any]], model: str, features: str = "last layer") -> float:
    """The accuracy of one row of :func:`probe`'s results.

    >>> accuracy([{"model": "pretrained", "features": "last layer", "accuracy": 0.5}], "pretrained")
    0.5
    """
    return next(r["accuracy"] for r in results if r["model"] == model and r["features"] in (features, "-"))


def format_table(results: list[dict[str, Any]]) -> str:
    """A plain-text table: accuracy ± its standard error (and ± sd over seeds), the gain over the
    baseline ± the paired standard error, and the gain in standard errors (``gain/SE``; with several
    seeds, the smallest over seeds)."""
    seeds = results[0].get("seeds", 1)
    over = f" (mean ± sd over {seeds} seeds; SE per seed)" if seeds > 1 else ""
    lines = [f"n = {results[0]['n']} labelled rows, {seeds} seed(s){over}"
             + ("; STS rows: Spearman's rho over scored pairs" if any(r["features"] == "STS Spearman" for r in results)
                else ""),
             f"{'model':<16} {'features':<15} {'accuracy':>17} {'gain':>17} {'gain/SE':>8} {'top layer':>9}"]
    for r in results:
        acc = f"{r['accuracy']:.4f} ± {r['se']:.4f}" + (f" (sd {r['sd']:.4f})" if seeds > 1 else "")
        gain = f"{r['gain']:+.4f} ± {r['gain_se']:.4f}" if "gain" in r else "-"
        if "gain" in r and seeds > 1:
            gain += f" (sd {r['gain_sd']:.4f})"
        ratio = f"{min(r['gain_ratios']):.1f}" if "gain_ratios" in r else "-"
        lines.append(f"{r['model']:<16} {r['features']:<15} {acc:>17} {gain:>17} {ratio:>8} "
                     f"{r.get('top_layer', '-'):>9}")
    return "\n".join(lines)
