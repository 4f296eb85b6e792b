"""Search by example (as Curator does): items ranked by their mean cosine similarity to the examples to
find minus their mean cosine similarity to the examples to avoid.

With unit vectors x, q_i and a_j that score is x . (mean q_i - mean a_j), linear in x: one
inner-product search with that combined vector ranks every item exactly as the score does (an
approximate index, approximately).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from multissl.curate.index import build_index, load_index
from multissl.curate.store import Embeddings, LabelStore
from multissl.errors import RecipeError


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def query_vector(emb: Embeddings, query: list[str], avoid: list[str] = ()) -> tuple[np.ndarray, list[int]]:
    """(the combined query direction, the rows of the examples themselves)."""
    if not query:
        raise RecipeError("--query: give at least one item to search like")
    q_rows, a_rows = emb.rows_of(list(query), "--query"), emb.rows_of(list(avoid), "--avoid")
    direction = _unit(emb.vectors_of(q_rows)).mean(0)
    if a_rows:
        direction = direction - _unit(emb.vectors_of(a_rows)).mean(0)
    if not np.any(direction):
        raise RecipeError("--query and --avoid cancel out (the same items?)")
    return direction.astype(np.float32), q_rows + a_rows


def search(emb: str | Path | Embeddings, query: list[str], avoid: list[str] = (), k: int = 20,
           reindex: str | None = None, index: Any = None) -> list[dict[str, Any]]:
    """The ``k`` items most like ``query`` and least like ``avoid`` (ids of items of ``emb``), the
    examples themselves left out: one dict each (id, input, data_label, label given so far, score).
    ``reindex`` rebuilds the index first (auto, flat, hnsw, ivfpq).

    >>> search("emb/", ["photos/cat1.png"], avoid=["photos/dog3.png"], k=5)  # doctest: +SKIP
    """
    emb = emb if isinstance(emb, Embeddings) else Embeddings(emb)
    if k < 1:
        raise RecipeError(f"--k {k}: must be at least 1")
    if reindex:
        build_index(emb.folder, reindex)
    index = index if index is not None else load_index(emb.folder, len(emb), emb.dim)
    direction, examples = query_vector(emb, query, avoid)
    scores, rows = index.search(direction[None], min(len(emb), k + len(examples)))
    skip = set(examples)
    labels = LabelStore(emb).labels
    hits = []
    for score, row in zip(scores[0], rows[0], strict=True):
        if row < 0 or int(row) in skip:
            continue
        hits.append({**emb.record(int(row), labels), "score": float(score)})
    return hits[:k]
