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


def _pool(hidden_states: tuple[torch.Tensor, ...], valid: torch.Tensor) -> np.ndarray:
    """Mean over valid positions of every hidden state: (B, layers, D)."""
    m = valid.unsqueeze(-1).to(hidden_states[0].dtype)
    return torch.stack([(h * m).sum(1) / m.sum(1).clamp_min(1) for h in hidden_states], 1).numpy()


@torch.no_grad()
def text_features(model: torch.nn.Module, tokenizer: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Every hidden state mean-pooled over non-padding tokens: (texts, layers + 1, D)."""
    rows = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                        max_length=model.config.max_position_embeddings - model.config.pad_token_id - 1,
                        return_tensors="pt")
        rows.append(_pool(model(**enc, output_hidden_states=True).hidden_states, enc["attention_mask"].bool()))
    return np.concatenate(rows)


@torch.no_grad()
def audio_features(model: torch.nn.Module, extractor: Any, paths: list[str], batch_size: int = 16) -> np.ndarray:
    """Every hidden state mean-pooled over real (non-padding) frames: (files, layers + 1, D)."""
    from multissl.data.audio import read_audio

    rate = extractor.sampling_rate
    rows = []
    for i in range(0, len(paths), batch_size):
        wavs = [read_audio(p, rate) for p in paths[i:i + batch_size]]
        enc = extractor(wavs, sampling_rate=rate, padding=True, return_attention_mask=True, return_tensors="pt")
        states = model(**enc, output_hidden_states=True).hidden_states
        valid = model._get_feature_vector_attention_mask(states[0].shape[1], enc["attention_mask"]).bool()
        rows.append(_pool(states, valid))
    return np.concatenate(rows)


@torch.no_grad()
def image_features(model: torch.nn.Module, processor: Any, paths: list[str], batch_size: int = 64,
                   pool: str = "mean") -> np.ndarray:
    """Every hidden state pooled: the mean over patches, or the CLS token (``pool="cls"``):
    (images, layers + 1, D)."""
    from multissl.data.vision import Picture

    rows = []
    for i in range(0, len(paths), batch_size):
        images = [Picture(p).open() for p in paths[i:i + batch_size]]
        states = model(**processor(images, return_tensors="pt"), output_hidden_states=True).hidden_states
        if pool == "cls":
            rows.append(torch.stack([h[:, 0] for h in states], 1).numpy())
        else:
            rows.append(torch.stack([h[:, 1:].mean(1) for h in states], 1).numpy())
    return np.concatenate(rows)


def load_features_backend(model_dir: str | Path, pool: str = "mean") -> tuple[Any, Featurizer]:
    """(preprocessor, featurizer) for an exported folder, chosen by the preprocessor it holds."""
    import json

    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

    folder = Path(model_dir)
    if (folder / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(model_dir), text_features
    if (folder / "preprocessor_config.json").is_file():
        config = json.loads((folder / "preprocessor_config.json").read_text())
        if "image_processor_type" in config:
            proc = AutoImageProcessor.from_pretrained(model_dir)
            return proc, lambda m, p, x: image_features(m, p, x, pool=pool)
        fe = AutoFeatureExtractor.from_pretrained(model_dir)
        if getattr(fe, "sampling_rate", None):
            return fe, audio_features
    raise FileNotFoundError(f"{model_dir}: no tokenizer_config.json or audio/image preprocessor_config.json")


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


def knn_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
              k: int = 20) -> float:
    """Accuracy of a k-nearest-neighbour vote by cosine similarity (each neighbour weighted by its
    similarity, ties to the first class).

    >>> x = np.r_[np.ones((5, 2)), -np.ones((5, 2))]; y = np.r_[np.zeros(5), np.ones(5)]
    >>> knn_probe(x, y, x, y, k=3)
    1.0
    """
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True).clip(1e-12)
    b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True).clip(1e-12)
    sims = b @ a.T
    k = min(k, len(a))
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    classes, codes = np.unique(train_y, return_inverse=True)
    votes = np.zeros((len(b), len(classes)))
    np.add.at(votes, (np.repeat(np.arange(len(b)), k), codes[top].ravel()), np.take_along_axis(sims, top, 1).ravel())
    return float((classes[votes.argmax(1)] == test_y).mean())


def weighted_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                   seed: int = 0, steps: int = 400, lr: float = 1e-2, weight_decay: float = 1e-3
                   ) -> tuple[float, np.ndarray]:
    """SUPERB-style probe on (N, layers, D) features: a learned softmax weight per layer mixes the
    standardised layers, then a linear classifier; full-batch Adam. Returns (test accuracy, weights).

    >>> x = np.random.default_rng(0).normal(size=(40, 3, 4)); y = (x[:, 2, 0] > 0).astype(int)
    >>> acc, w = weighted_probe(x, y, x, y); acc > 0.9 and int(w.argmax()) == 2
    True
    """
    classes, train_t = np.unique(train_y, return_inverse=True)
    index = {c: i for i, c in enumerate(classes)}
    mean, std = train_x.mean(0, keepdims=True), train_x.std(0, keepdims=True) + 1e-6
    xtr = torch.from_numpy((train_x - mean) / std).float()
    xte = torch.from_numpy((test_x - mean) / std).float()
    ytr = torch.from_numpy(train_t)
    g = torch.Generator().manual_seed(seed)
    logits_w = torch.zeros(xtr.shape[1], requires_grad=True)
    head = torch.nn.Linear(xtr.shape[2], len(classes))
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.01)
        head.bias.zero_()
    opt = torch.optim.Adam([logits_w, *head.parameters()], lr=lr, weight_decay=weight_decay)

    def predict(x: torch.Tensor) -> torch.Tensor:
        return head((x * logits_w.softmax(0)[None, :, None]).sum(1))

    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(predict(xtr), ytr).backward()
        opt.step()
    with torch.no_grad():
        pred = classes[predict(xte).argmax(1).numpy()]
    known = np.array([t in index for t in test_y])
    return float((pred == test_y)[known].sum() / len(test_y)), logits_w.detach().softmax(0).numpy()


def read_labelled(data: str | Path, input_column: str, label_column: str, max_samples: int = 0, seed: int = 0):
    """A labelled table (see :func:`read_table`), or a folder with one sub-folder per class (the
    sub-folder name is the label). Relative paths in a table are resolved against its folder."""
    import pandas as pd

    from multissl.data.audio import AUDIO_EXTENSIONS
    from multissl.data.vision import IMAGE_EXTENSIONS

    p = Path(data)
    if p.is_dir():
        exts = AUDIO_EXTENSIONS + IMAGE_EXTENSIONS
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


def probe(model_dir: str | Path, data: str | Path, label_column: str, input_column: str = "text",
          test_size: float = 0.25, seed: int = 0, max_samples: int = 0, pool: str = "mean", k: int = 20
          ) -> list[dict[str, Any]]:
    """Probe accuracy on a held-out split for the model and the same architecture at random init,
    each with the last layer pooled (logistic regression, and a k-NN vote by cosine similarity) and
    with a learned weighted sum of all layers; plus the majority class. ``pool``: images only, mean
    of the patches or the CLS token.

    >>> probe("out/t1", "labelled.jsonl", label_column="label")  # doctest: +SKIP
    """
    from sklearn.model_selection import train_test_split
    from transformers import AutoConfig, AutoModel

    df = read_labelled(data, input_column, label_column, max_samples, seed)
    labels = df[label_column].astype(str).to_numpy()
    if len(set(labels)) < 2:
        raise ValueError(f"--label-column {label_column}: needs at least two classes, found {len(set(labels))}")
    idx_train, idx_test = train_test_split(np.arange(len(df)), test_size=test_size, random_state=seed,
                                           stratify=labels if min(np.unique(labels, return_counts=True)[1]) > 1
                                           else None)
    preprocessor, featurize = load_features_backend(model_dir, pool)
    inputs = df[input_column].tolist()
    torch.manual_seed(seed)
    models = {
        "pretrained": AutoModel.from_pretrained(model_dir),
        "random init": AutoModel.from_config(AutoConfig.from_pretrained(model_dir)),
    }
    n = {"n_train": len(idx_train), "n_test": len(idx_test)}
    results = []
    for name, model in models.items():
        x = featurize(model.eval(), preprocessor, inputs)
        acc = linear_probe(x[idx_train, -1], labels[idx_train], x[idx_test, -1], labels[idx_test], seed)
        results.append({"model": name, "features": "last layer", "accuracy": acc, **n})
        acc = knn_probe(x[idx_train, -1], labels[idx_train], x[idx_test, -1], labels[idx_test], k)
        results.append({"model": name, "features": f"{k}-NN", "accuracy": acc, **n})
        acc, w = weighted_probe(x[idx_train], labels[idx_train], x[idx_test], labels[idx_test], seed)
        results.append({"model": name, "features": "layer-weighted", "accuracy": acc, "top_layer": int(w.argmax()),
                        **n})
    values, counts = np.unique(labels[idx_train], return_counts=True)
    majority = values[counts.argmax()]
    results.append({"model": "majority class", "features": "-",
                    "accuracy": float((labels[idx_test] == majority).mean()), **n})
    return results


def accuracy(results: list[dict[str, Any]], model: str, features: str = "last layer") -> float:
    """The accuracy of one row of :func:`probe`'s results.

    >>> accuracy([{"model": "pretrained", "features": "last layer", "accuracy": 0.5}], "pretrained")
    0.5
    """
    return next(r["accuracy"] for r in results if r["model"] == model and r["features"] in (features, "-"))


def format_table(results: list[dict[str, Any]]) -> str:
    """A plain-text table of probe results (``top layer``: the layer with the largest learned weight)."""
    lines = [f"{'model':<16} {'features':<15} {'accuracy':>9} {'top layer':>9} {'n_train':>8} {'n_test':>7}"]
    lines += [f"{r['model']:<16} {r['features']:<15} {r['accuracy']:>9.4f} {r.get('top_layer', '-'):>9} "
              f"{r['n_train']:>8} {r['n_test']:>7}" for r in results]
    return "\n".join(lines)
