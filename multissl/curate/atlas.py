"""A 2-D map of an embeddings folder: t-SNE (van der Maaten & Hinton 2008, scikit-learn's) of the unit
embeddings after PCA to at most 50 dimensions, on at most ``max_points`` items drawn at random, each
point coloured by its label (given on the page, else the data's) or, without labels, by its k-means
cluster. scikit-learn's t-SNE is already a dependency; umap-learn would add numba-compiled code and
pynndescent for a picture of the same use."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multissl.curate.store import Embeddings, LabelStore


def map_coordinates(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 2) t-SNE coordinates of the rows of ``x``."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def draw_map(emb: str | Path | Embeddings, out: str | Path | None = None, max_points: int = 5000, seed: int = 0
             ) -> Path:
    """Draw the map of ``emb`` to ``out`` (default ``emb/map.png``); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    emb = emb if isinstance(emb, Embeddings) else Embeddings(emb)
    rows = np.arange(len(emb))
    if len(rows) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_points, replace=False))
    x = emb.vectors_of(rows.tolist())
    given, data = LabelStore(emb).labels, emb.data_labels()
    labels = [given.get(emb.ids[r], data[r]) for r in rows]
    xy = map_coordinates(x, seed) if len(rows) > 3 else np.c_[np.arange(len(rows)), np.zeros(len(rows))]
    if all(lab is None for lab in labels):
        from sklearn.cluster import KMeans

        k = min(10, len(rows))
        labels = [f"cluster {c}" for c in KMeans(k, n_init=1, random_state=seed).fit_predict(x)]
        title = f"{emb.folder.name}: {len(rows)} items, coloured by k-means cluster"
    else:
        title = f"{emb.folder.name}: {len(rows)} items, coloured by label"
        labels = [lab if lab is not None else "(none)" for lab in labels]
    classes = sorted(set(labels))
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(8, 8), dpi=100)
    labels_arr = np.asarray(labels)
    for c_i, c in enumerate(classes):
        m = labels_arr == c
        color = "lightgrey" if c == "(none)" else cmap(c_i % cmap.N)
        ax.scatter(xy[m, 0], xy[m, 1], s=6, color=color, label=c if len(classes) <= 20 else None)
    if len(classes) <= 20:
        ax.legend(markerscale=3, fontsize=8, loc="best")
    ax.set_title(title + " (t-SNE)")
    ax.set_xticks([])
    ax.set_yticks([])
    path = Path(out) if out else emb.folder / "map.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
