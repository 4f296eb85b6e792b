"""The vector index of an embeddings folder: FAISS (``faiss-cpu``), filled through ``datasets``' FAISS
integration (``Dataset.add_faiss_index``, batch by batch from the Arrow files, so memory holds the index
and one batch), saved beside the embeddings as ``index.faiss`` with ``index.json``.

Similarity is the cosine: every index starts with an l2 normalisation (``IndexPreTransform``), then
ranks by inner product. Kinds:

- ``flat``: exact inner product over every vector (the default up to ``FLAT_MAX`` vectors);
- ``hnsw``: a graph of ``HNSW_M`` links per vector (Malkov & Yashunin 2018), searched with ``efSearch``
  candidates (the default above ``FLAT_MAX``; no training, good recall, more memory);
- ``ivfpq``: an inverted file of ~4 sqrt(N) lists over product-quantised codes (Jegou et al. 2011),
  ``nprobe`` lists searched, the best ``k_factor * k`` re-ranked by exact inner product
  (``IndexRefineFlat``); for sets whose HNSW graph would not fit in memory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from multissl.errors import RecipeError

KINDS = ("auto", "flat", "hnsw", "ivfpq")
FLAT_MAX = 50_000
HNSW_M = 32
IVFPQ_MIN = 10_000  # 256 centroids per sub-quantiser want ~39 training vectors each
SEARCH_PARAMS = {"hnsw": {"efSearch": 128}, "ivfpq": {"nprobe": 32, "k_factor": 8}}


def choose_kind(n: int) -> str:
    """The index kind ``auto`` picks for ``n`` vectors.

    >>> choose_kind(1000), choose_kind(1_000_000)
    ('flat', 'hnsw')
    """
    return "flat" if n <= FLAT_MAX else "hnsw"


def _pq_parts(dim: int) -> int:
    """Sub-quantisers of a product quantiser: the largest divisor of ``dim`` that leaves each at least 4
    dimensions, and at most 64 of them (each is a k-means of 256 centres to train).

    >>> _pq_parts(64), _pq_parts(768), _pq_parts(30)
    (16, 64, 6)
    """
    return max(m for m in range(1, max(min(dim // 4, 64), 1) + 1) if dim % m == 0)


def make_index(kind: str, dim: int, n: int) -> Any:
    """An empty FAISS index of ``kind`` for ``n`` vectors of ``dim`` dimensions (cosine similarity)."""
    import faiss

    if kind == "flat":
        base = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = 80
    elif kind == "ivfpq":
        lists = max(1, min(int(4 * math.sqrt(n)), n // 39))  # FAISS wants >= 39 training points per list
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFPQ(quantizer, dim, lists, _pq_parts(dim), 8, faiss.METRIC_INNER_PRODUCT)
        base = faiss.IndexRefineFlat(ivf)  # faiss' Python wrappers keep the parts alive with the whole
    else:
        raise RecipeError(f"--index {kind}: expected one of {', '.join(KINDS)}")
    return faiss.IndexPreTransform(faiss.NormalizationTransform(dim, 2.0), base)


def build_index(folder: str | Path, kind: str = "auto", batch_size: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Build and save the index of the embeddings folder ``folder``; returns what ``index.json`` says."""
    from datasets import load_from_disk

    folder = Path(folder)
    ds = load_from_disk(str(folder))
    n, dim = ds.num_rows, int(ds.features["embedding"].length)
    chosen = choose_kind(n) if kind == "auto" else kind
    if chosen == "ivfpq" and n < IVFPQ_MIN:
        raise RecipeError(f"--index ivfpq: {n} vectors are too few to train its codebooks (needs {IVFPQ_MIN}; "
                          "use flat)")
    index = make_index(chosen, dim, n)
    if not index.is_trained:  # IVF-PQ learns its lists and codebooks from a sample
        rows = np.random.default_rng(seed).permutation(n)[: min(n, 50_000)]
        sample = np.asarray(ds.select(np.sort(rows)).with_format("numpy")["embedding"], dtype=np.float32)
        index.train(sample)
    ds.add_faiss_index("embedding", custom_index=index, batch_size=batch_size)
    ds.save_faiss_index("embedding", str(folder / "index.faiss"))
    info = {"kind": chosen, "vectors": n, "dim": dim, "metric": "cosine", "search": SEARCH_PARAMS.get(chosen, {})}
    (folder / "index.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def load_index(folder: str | Path, n: int, dim: int) -> Any:
    """The saved index of ``folder``, checked against the embeddings (``n`` vectors of ``dim``), with its
    search parameters set."""
    import faiss

    folder = Path(folder)
    path, info_path = folder / "index.faiss", folder / "index.json"
    if not path.is_file() or not info_path.is_file():
        raise RecipeError(f"{folder}: no index.faiss (build it with 'multissl search {folder} --reindex')")
    index = faiss.read_index(str(path))
    if index.d != dim:
        raise RecipeError(f"{path}: holds {index.d}-dimensional vectors, the embeddings have {dim} "
                          "(rebuild it with --reindex)")
    if index.ntotal != n:
        raise RecipeError(f"{path}: holds {index.ntotal} vectors, the embeddings {n} (rebuild it with --reindex)")
    set_search_params(index, json.loads(info_path.read_text()).get("search", {}))
    return index


def set_search_params(index: Any, params: dict[str, float]) -> None:
    """Set ``efSearch`` (HNSW), ``nprobe`` (IVF) and ``k_factor`` (re-ranking) on an index made here."""
    import faiss

    space = faiss.ParameterSpace()
    for key, value in params.items():
        if key == "k_factor":
            faiss.downcast_index(index.index).k_factor = value
        else:
            space.set_index_parameter(index, key, value)
