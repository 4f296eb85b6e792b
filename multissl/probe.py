"""Linear probes: how much a frozen encoder's features know about a labelled task, next to the same
architecture at random initialisation (and the majority-class floor)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

Featurizer = Callable[[torch.nn.Module, Any, list[Any]], np.ndarray]


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


@torch.no_grad()
def text_features(model: torch.nn.Module, tokenizer: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Mean of the last hidden state over non-padding tokens, one row per text."""
    rows = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                        max_length=model.config.max_position_embeddings - model.config.pad_token_id - 1,
                        return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        rows.append(((h * m).sum(1) / m.sum(1).clamp_min(1)).numpy())
    return np.concatenate(rows)


def load_features_backend(model_dir: str | Path) -> tuple[Any, Featurizer]:
    """(preprocessor, featurizer) for an exported folder, chosen by the preprocessor it holds."""
    from transformers import AutoTokenizer

    if (Path(model_dir) / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(model_dir), text_features
    raise FileNotFoundError(f"{model_dir}: no tokenizer_config.json; the probe reads text models")


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 seed: int = 0) -> float:
    """Accuracy of a standardised logistic regression trained on (train_x, train_y).

    >>> x = np.r_[np.zeros((20, 2)), np.ones((20, 2))]; y = np.r_[np.zeros(20), np.ones(20)]
    >>> linear_probe(x, y, x, y)
    1.0
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(train_x, train_y)
    return float(clf.score(test_x, test_y))


def probe(model_dir: str | Path, data: str | Path, label_column: str, input_column: str = "text",
          test_size: float = 0.25, seed: int = 0, max_samples: int = 0) -> list[dict[str, Any]]:
    """Probe accuracy on a held-out split for the model, the same architecture at random init, and
    the majority class.

    >>> probe("out/t1", "labelled.jsonl", label_column="label")  # doctest: +SKIP
    """
    from sklearn.model_selection import train_test_split
    from transformers import AutoConfig, AutoModel

    df = read_table(data, [input_column, label_column], max_samples, seed)
    labels = df[label_column].astype(str).to_numpy()
    if len(set(labels)) < 2:
        raise ValueError(f"--label-column {label_column}: needs at least two classes, found {len(set(labels))}")
    idx_train, idx_test = train_test_split(np.arange(len(df)), test_size=test_size, random_state=seed,
                                           stratify=labels if min(np.unique(labels, return_counts=True)[1]) > 1
                                           else None)
    preprocessor, featurize = load_features_backend(model_dir)
    inputs = df[input_column].tolist()
    torch.manual_seed(seed)
    models = {
        "pretrained": AutoModel.from_pretrained(model_dir),
        "random init": AutoModel.from_config(AutoConfig.from_pretrained(model_dir)),
    }
    results = []
    for name, model in models.items():
        x = featurize(model.eval(), preprocessor, inputs)
        acc = linear_probe(x[idx_train], labels[idx_train], x[idx_test], labels[idx_test], seed)
        results.append({"model": name, "accuracy": acc, "n_train": len(idx_train), "n_test": len(idx_test)})
    values, counts = np.unique(labels[idx_train], return_counts=True)
    majority = values[counts.argmax()]
    results.append({"model": "majority class", "accuracy": float((labels[idx_test] == majority).mean()),
                    "n_train": len(idx_train), "n_test": len(idx_test)})
    return results


def format_table(results: list[dict[str, Any]]) -> str:
    """A plain-text table of probe results."""
    lines = [f"{'model':<16} {'accuracy':>9} {'n_train':>8} {'n_test':>7}"]
    lines += [f"{r['model']:<16} {r['accuracy']:>9.4f} {r['n_train']:>8} {r['n_test']:>7}" for r in results]
    return "\n".join(lines)
