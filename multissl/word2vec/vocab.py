"""Streaming word counting, with gensim's vocabulary rules: ``min_count``, and ``max_vocab_size``
enforced while counting by dropping ever more frequent words (so counting never outgrows memory)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*|\d+", re.UNICODE)


def simple_tokenize(line: str) -> list[str]:
    """Lower-cased words (letters, with inner apostrophes) and numbers.

    >>> simple_tokenize("In the Beginning, God's 7 days")
    ['in', 'the', 'beginning', "god's", '7', 'days']
    """
    return WORD.findall(line.lower())


class _Lookup(dict):
    """word -> id, and -1 for a word out of the vocabulary (without storing it)."""

    def __missing__(self, key: str) -> int:
        return -1


@dataclass
class Vocab:
    """Words sorted by decreasing count, with their counts."""

    words: list[str]
    counts: np.ndarray
    total_words: int
    """Raw words in the corpus, those under min_count included."""

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}
        self.lookup = _Lookup(self.index)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids of in-vocabulary tokens (the others are dropped, as in gensim)."""
        idx = self.index
        return [idx[t] for t in tokens if t in idx]


def build_vocab(
    sentences: Iterable[list[str]], min_count: int = 5, max_vocab_size: int | None = None,
) -> Vocab:
    """Count words in one pass over ``sentences`` (lists of tokens).

    >>> build_vocab([["a", "b", "a"], ["a", "c"]], min_count=2).words
    ['a']
    """
    counts: Counter[str] = Counter()
    total, min_reduce = 0, 1
    for sentence in sentences:
        counts.update(sentence)
        total += len(sentence)
        if max_vocab_size and len(counts) > max_vocab_size:
            counts = Counter({w: c for w, c in counts.items() if c > min_reduce})
            min_reduce += 1
    # by decreasing count; ties with the later first appearance first, the order gensim gives
    kept = [(c, w) for i, (w, c) in sorted(enumerate(counts.items()), key=lambda e: (-e[1][1], -e[0]))
            if c >= min_count]
    if not kept:
        if total == 0:
            raise ValueError("the corpus is empty: no words found")
        raise ValueError(f"no word occurs min_count={min_count} times ({total} words, {len(counts)} distinct); "
                         "lower --min-count")
    return Vocab([w for _, w in kept], np.array([c for c, _ in kept], dtype=np.int64), total)

