"""What to label next: ``budget`` items chosen among those not labelled yet.

- ``kcenter``: k-center greedy (Sener & Savarese 2018, "Active learning for convolutional neural
  networks: a core-set approach"): with the labelled items as the first centres, repeatedly take the item
  farthest (euclidean, on unit vectors) from its nearest centre, so that every item lies close to a
  chosen one. Without labels the first centre is drawn at random.
- ``kmeans``: k-means with k-means++ seeding (Arthur & Vassilvitskii 2007) of the unlabelled items into
  ``budget`` clusters, and the item nearest each centre: typical items that cover the data.
- ``uncertainty``: a linear probe (standardised logistic regression) trained on the labels so far
  scores the unlabelled items; ``margin`` takes the smallest gap between the two most probable classes,
  ``entropy`` the largest entropy of the predicted distribution.
- ``random``: a uniform draw, the baseline the others must beat.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from multissl.curate.store import Embeddings, LabelStore, read_labels
from multissl.errors import RecipeError

STRATEGIES = ("kcenter", "kmeans", "uncertainty", "random")
MEASURES = ("margin", "entropy")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def _sq_dist_to(x: np.ndarray, y: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Squared euclidean distance of every row of ``x`` to its nearest row of ``y``."""
    out = np.empty(len(x), np.float32)
    yy = (y * y).sum(1)
    for s in range(0, len(x), chunk):
        xs = x[s:s + chunk]
        d = (xs * xs).sum(1)[:, None] - 2 * xs @ y.T + yy[None]
        out[s:s + chunk] = d.min(1)
    return np.maximum(out, 0)


def kcenter_greedy(x: np.ndarray, budget: int, labelled: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows chosen by k-center greedy; ``labelled`` rows are the initial centres and never chosen.

    >>> x = np.array([[0.0], [0.1], [5.0], [10.0]])
    >>> kcenter_greedy(x, 2, np.array([0]), np.random.default_rng(0)).tolist()
    [3, 2]
    """
    n = len(x)
    chosen: list[int] = []
    if len(labelled):
        nearest = _sq_dist_to(x, x[labelled])
    else:
        first = int(rng.integers(n))
        chosen.append(first)
        nearest = _sq_dist_to(x, x[[first]])
    nearest[labelled] = -1.0  # centres already: never chosen
    while len(chosen) < budget:
        pick = int(np.argmax(nearest))
        if nearest[pick] < 0:
            break
        chosen.append(pick)
        nearest = np.minimum(nearest, ((x - x[pick]) ** 2).sum(1))
        nearest[chosen] = -1.0
    return np.asarray(chosen[:budget], dtype=np.int64)


def kmeans_select(x: np.ndarray, budget: int, candidates: np.ndarray, seed: int) -> np.ndarray:
    """The candidate nearest each centre of a k-means (k-means++ seeding) of the candidates into
    ``budget`` clusters; each candidate is taken once (the next nearest when a centre's is taken)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    pool = x[candidates]
    k = min(budget, len(pool))
    algo = KMeans if len(pool) <= 20_000 else MiniBatchKMeans
    km = algo(n_clusters=k, init="k-means++", n_init=1, random_state=seed).fit(pool)
    centres = km.cluster_centers_.astype(np.float32)
    taken: set[int] = set()
    out = []
    for c in range(k):
        dist = ((pool - centres[c]) ** 2).sum(1)
        for i in np.argsort(dist):
            if int(i) not in taken:
                taken.add(int(i))
                out.append(int(candidates[i]))
                break
    return np.asarray(out, dtype=np.int64)


def uncertainty_scores(x: np.ndarray, labelled: np.ndarray, labels: list[str], candidates: np.ndarray,
                       measure: str = "margin", seed: int = 0) -> np.ndarray:
    """How uncertain a linear probe trained on the labelled rows is about each candidate (higher: more
    uncertain): minus the margin between its two most probable classes, or the entropy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(set(labels)) < 2:
        raise RecipeError(f"--strategy uncertainty: needs labels of at least 2 classes (has {len(set(labels))}); "
                          "label a first batch chosen by kcenter or kmeans")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    p = clf.fit(x[labelled], labels).predict_proba(x[candidates])
    if measure == "margin":
        top = np.sort(p, axis=1)[:, -2:]
        return -(top[:, 1] - top[:, 0])
    if measure == "entropy":
        return -(p * np.log(p.clip(1e-12))).sum(1)
    raise RecipeError(f"--measure {measure}: expected one of {', '.join(MEASURES)}")


def choose(x: np.ndarray, budget: int, strategy: str, labelled: dict[int, str], seed: int = 0,
           measure: str = "margin") -> tuple[np.ndarray, np.ndarray]:
    """(rows to label next, their scores) among the rows of ``x`` not in ``labelled`` ({row: label}).
    ``x`` is used as given (pass unit vectors for cosine geometry)."""
    if strategy not in STRATEGIES:
        raise RecipeError(f"--strategy {strategy}: expected one of {', '.join(STRATEGIES)}")
    if budget < 1:
        raise RecipeError(f"--budget {budget}: must be at least 1")
    rng = np.random.default_rng(seed)
    done = np.asarray(sorted(labelled), dtype=np.int64)
    free = np.setdiff1d(np.arange(len(x)), done)
    if not len(free):
        raise RecipeError("every item is labelled already")
    budget = min(budget, len(free))
    if strategy == "random":
        rows = rng.choice(free, budget, replace=False)
        return rows, np.zeros(len(rows))
    if strategy == "kcenter":
        rows = kcenter_greedy(x, budget, done, rng)
        return rows, np.sqrt(_sq_dist_to(x[rows], x[done])) if len(done) else np.zeros(len(rows))
    if strategy == "kmeans":
        return kmeans_select(x, budget, free, seed), np.zeros(budget)
    scores = uncertainty_scores(x, done, [labelled[int(r)] for r in done], free, measure, seed)
    order = np.argsort(-scores, kind="stable")[:budget]
    return free[order], scores[order]


def select(emb: str | Path | Embeddings, budget: int, strategy: str = "kcenter", *, labels: str | Path | None = None,
           seed: int = 0, measure: str = "margin", out: str | Path | None = None) -> list[dict[str, Any]]:
    """Choose ``budget`` items of ``emb`` to label next by ``strategy``, leaving out those labelled on the
    page (``emb/labels.csv``) and in ``labels`` (a CSV with id or input, and label). Writes them to
    ``out`` (default ``emb/next.csv``: id, input, score; the page shows it as the next batch) and
    returns them.

    >>> select("emb/", 100, "kcenter")  # doctest: +SKIP
    """
    emb = emb if isinstance(emb, Embeddings) else Embeddings(emb)
    given = dict(LabelStore(emb).labels)
    if labels is not None:
        given.update(read_labels(labels, emb))
    labelled = {emb.row_of[i]: label for i, label in given.items()}
    rows, scores = choose(unit(emb.vectors), budget, strategy, labelled, seed, measure)
    picked = [{**emb.record(int(r)), "score": float(s)} for r, s in zip(rows, scores, strict=True)]
    path = Path(out) if out else emb.folder / "next.csv"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "input", "score"])
        w.writerows([p["id"], p["input"], p["score"]] for p in picked)
    tmp.replace(path)
    return picked
