"""Classifiers on frozen features and the statistics of their accuracy.

Each classifier predicts labels for held-out rows; :func:`cross_val_predict` runs one over
stratified folds so that every row is predicted once, by a classifier that never saw it. An accuracy
is then a mean of n Bernoulli outcomes, with standard error sqrt(p (1 - p) / n); the gain of one
feature set over another on the same folds is a paired mean, whose standard error is that of the
per-row differences (much smaller than either accuracy's when the two agree on most rows).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Predictor = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


def linear_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Labels from a standardised logistic regression (the last layer's features, (N, D)).

    >>> x = np.r_[np.zeros((20, 2)), np.ones((20, 2))]; y = np.r_[np.zeros(20), np.ones(20)]
    >>> bool((linear_predict(x, y, x) == y).all())
    True
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    return clf.fit(train_x, train_y).predict(test_x)


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int = 0, k: int = 20,
                temperature: float = 0.0) -> np.ndarray:
    """Labels from a vote of the ``k`` training rows nearest by cosine similarity (on l2-normalised
    features). Each neighbour votes for its class with its similarity s, or with exp(s / T) at
    ``temperature`` T > 0: the weighted k-NN of Wu et al. 2018 (instance discrimination) that DINO
    (Caron et al. 2021) reports with k = 20, T = 0.07. Ties go to the first class.

    >>> x = np.r_[np.ones((5, 2)), -np.ones((5, 2))]; y = np.r_[np.zeros(5), np.ones(5)]
    >>> knn_predict(x, y, x, k=3).tolist()
    [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    >>> knn_predict(x, y, x, k=3, temperature=0.07).tolist() == y.tolist()
    True
    """
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True).clip(1e-12)
    b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True).clip(1e-12)
    sims = b @ a.T
    k = min(k, len(a))
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    near = np.take_along_axis(sims, top, 1)
    # exp((s - 1) / T) orders the votes as exp(s / T) does, without overflow at small T (s <= 1)
    weights = np.exp((near - 1.0) / temperature) if temperature > 0 else near
    classes, codes = np.unique(train_y, return_inverse=True)
    votes = np.zeros((len(b), len(classes)))
    np.add.at(votes, (np.repeat(np.arange(len(b)), k), codes[top].ravel()), weights.ravel())
    return classes[votes.argmax(1)]


def low_shot_rows(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """The rows of a stratified ``fraction`` of ``labels``: round(fraction * n_c) rows drawn from each
    class c of n_c rows, at least one, sorted.

    >>> low_shot_rows(np.r_[np.zeros(50), np.ones(150)], 0.1).size, low_shot_rows(np.r_[0, 0, 1], 0.01).size
    (20, 2)
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    picked = [rng.choice(np.flatnonzero(labels == c), max(1, round(fraction * n)), replace=False)
              for c, n in zip(classes, counts, strict=True)]
    return np.sort(np.concatenate(picked))


class LowShot:
    """A predictor trained on a stratified ``fraction`` of its training rows' labels only
    (:func:`low_shot_rows`, drawn by the seed), as the 1% and 10% label rows of self-supervised method
    tables (e.g. SimCLR, Chen et al. 2020); it predicts every test row.

    >>> x = np.r_[np.zeros((50, 1)), np.ones((50, 1))]; y = np.r_[np.zeros(50), np.ones(50)]
    >>> bool((LowShot(linear_predict, 0.02)(x, y, x) == y).all())
    True
    """

    def __init__(self, predict: Predictor, fraction: float):
        self.predict, self.fraction = predict, fraction

    def __call__(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int = 0) -> np.ndarray:
        rows = low_shot_rows(train_y, self.fraction, seed)
        return self.predict(train_x[rows], train_y[rows], test_x, seed)


class LayerWeightedProbe:
    """SUPERB-style probe on (N, layers, D) features: a learned softmax weight per layer mixes the
    standardised layers, then a linear classifier; full-batch Adam. ``weights`` holds the layer
    weights of the last fit.

    >>> x = np.random.default_rng(0).normal(size=(40, 3, 4)); y = (x[:, 2, 0] > 0).astype(int)
    >>> probe = LayerWeightedProbe()
    >>> bool((probe(x, y, x) == y).mean() > 0.9), int(probe.weights.argmax())
    (True, 2)
    """

    def __init__(self, steps: int = 400, lr: float = 1e-2, weight_decay: float = 1e-3):
        self.steps, self.lr, self.weight_decay = steps, lr, weight_decay
        self.weights = np.zeros(0)

    def __call__(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int = 0) -> np.ndarray:
        classes, train_t = np.unique(train_y, return_inverse=True)
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
        opt = torch.optim.Adam([logits_w, *head.parameters()], lr=self.lr, weight_decay=self.weight_decay)

        def predict(x: torch.Tensor) -> torch.Tensor:
            return head((x * logits_w.softmax(0)[None, :, None]).sum(1))

        for _ in range(self.steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(predict(xtr), ytr).backward()
            opt.step()
        self.weights = logits_w.detach().softmax(0).numpy()
        with torch.no_grad():
            return classes[predict(xte).argmax(1).numpy()]


def folds_of(labels: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) of stratified folds (plain folds when a class has fewer rows than
    ``n_folds``), shuffled by ``seed``."""
    from sklearn.model_selection import KFold, StratifiedKFold

    rows = np.arange(len(labels))
    counts = np.unique(labels, return_counts=True)[1]
    splitter = (StratifiedKFold if counts.min() >= n_folds else KFold)(n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(rows, labels))


def cross_val_predict(predict: Predictor, x: np.ndarray, labels: np.ndarray,
                      folds: list[tuple[np.ndarray, np.ndarray]], seed: int = 0) -> np.ndarray:
    """Each row's label predicted by ``predict`` trained on the other folds.

    >>> x = np.r_[np.zeros((10, 1)), np.ones((10, 1))]; y = np.r_[np.zeros(10), np.ones(10)]
    >>> (cross_val_predict(linear_predict, x, y, folds_of(y, 5, 0)) == y).mean()
    np.float64(1.0)
    """
    out = np.empty(len(labels), dtype=labels.dtype)
    for train, test in folds:
        out[test] = predict(x[train], labels[train], x[test], seed)
    return out


def accuracy_se(correct: np.ndarray) -> tuple[float, float]:
    """(accuracy, its standard error sqrt(p (1 - p) / n)) of a 0/1 vector.

    >>> accuracy_se(np.r_[np.ones(75), np.zeros(25)])
    (0.75, 0.04330127018922193)
    """
    p = float(np.mean(correct))
    return p, float(np.sqrt(p * (1 - p) / len(correct)))


def paired_gain(correct: np.ndarray, baseline: np.ndarray) -> tuple[float, float]:
    """(mean of ``correct - baseline`` over the same rows, its standard error).

    >>> paired_gain(np.r_[np.ones(60), np.zeros(40)], np.r_[np.ones(50), np.zeros(50)])
    (0.1, 0.030151134457776365)
    """
    d = np.asarray(correct, float) - np.asarray(baseline, float)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def mean_sd(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for one value).

    >>> mean_sd([0.5, 0.7])
    (0.6, 0.14142135623730948)
    """
    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0
