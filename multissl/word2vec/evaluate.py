"""Intrinsic evaluation of word vectors: word-pair similarity (Spearman) and analogies (3CosAdd)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def evaluate_pairs(words: list[str], vectors: np.ndarray, path: str | Path) -> dict[str, float]:
    """Spearman correlation between cosine similarities and human scores on a pair file (lines of
    ``word1 word2 score``, tab or space separated; ``#`` comments). Pairs with an unknown word
    are left out and counted, as gensim does.

    >>> evaluate_pairs(["a", "b", "c"], np.eye(3), "pairs.tsv")  # doctest: +SKIP
    """
    from scipy.stats import spearmanr

    index = {w: i for i, w in enumerate(words)}
    unit = _unit(vectors)
    human, model, oov, bad = [], [], 0, 0
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.replace("\t", " ").split()
        try:
            a, b, score = parts[0].lower(), parts[1].lower(), float(parts[2])
        except (IndexError, ValueError):
            bad += 1  # a header or a malformed line
            continue
        if a not in index or b not in index:
            oov += 1
            continue
        human.append(score)
        model.append(float(unit[index[a]] @ unit[index[b]]))
    if len(human) < 2:
        raise ValueError(f"{path}: fewer than two pairs with both words in the vocabulary ({oov} out of vocabulary)")
    rho = spearmanr(human, model).statistic
    return {"spearman": float(rho), "pairs": len(human), "oov_pairs": oov, "skipped_lines": bad}


def evaluate_analogies(words: list[str], vectors: np.ndarray, path: str | Path,
                       restrict_vocab: int = 300_000) -> dict[str, float]:
    """Accuracy on a Google-format analogy file (``: section`` lines, then ``a b c d``): the answer
    to a:b :: c:? is the word nearest to b - a + c (3CosAdd), the three question words excluded.
    Only the ``restrict_vocab`` most frequent words are used; questions outside them are counted
    as skipped."""
    words = words[:restrict_vocab]
    index = {w: i for i, w in enumerate(words)}
    unit = _unit(np.asarray(vectors[: len(words)], dtype=np.float32))
    questions, skipped = [], 0
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip() or line.startswith(":"):
            continue
        q = line.lower().split()
        if len(q) != 4 or any(w not in index for w in q):
            skipped += 1
            continue
        questions.append([index[w] for w in q])
    if not questions:
        return {"accuracy": float("nan"), "questions": 0, "skipped": skipped}
    q = np.array(questions)
    correct = 0
    for start in range(0, len(q), 1024):
        block = q[start:start + 1024]
        target = unit[block[:, 1]] - unit[block[:, 0]] + unit[block[:, 2]]
        sims = target @ unit.T
        rows = np.arange(len(block))
        for col in range(3):
            sims[rows, block[:, col]] = -np.inf
        correct += int((sims.argmax(1) == block[:, 3]).sum())
    return {"accuracy": correct / len(q), "questions": len(q), "skipped": skipped}
