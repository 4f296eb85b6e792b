"""Word counting and encoding in one pass, with gensim's vocabulary rules: ``min_count``, and
``max_vocab_size`` enforced while counting by dropping ever more frequent words (so counting never
outgrows memory). Tokens come in flat blocks with ``BREAK`` at sentence ends; ids are assigned in
order of first appearance with C-level dict lookups, and counted with ``np.bincount``."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*|\d+", re.UNICODE)
BREAK = "\n"
"""The token that ends a sentence in a token block (the simple tokenizer never gives it)."""
BREAK_ID = -2
MAX_SENTENCE = 10_000  # words; longer sentences are cut, as gensim does


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
        self.lookup[BREAK] = BREAK_ID

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids of in-vocabulary tokens (the others are dropped, as in gensim)."""
        idx = self.index
        return [idx[t] for t in tokens if t in idx]


class WordIds(dict):
    """word -> id in order of first appearance: a new word gets the next id; ``BREAK`` is ``BREAK_ID``."""

    def __init__(self) -> None:
        super().__init__({BREAK: BREAK_ID})
        self.next = 0

    def __missing__(self, word: str) -> int:
        self[word] = i = self.next
        self.next += 1
        return i


def sentence_blocks(sentences: Iterable[list[str]], per_block: int = 20_000) -> Iterator[list[str]]:
    """Token lists per sentence as flat token blocks with ``BREAK`` after each sentence."""
    it = iter(sentences)
    while batch := list(itertools.islice(it, per_block)):
        block: list[str] = []
        for sentence in batch:
            block += sentence
            block.append(BREAK)
        yield block


def encode_blocks(blocks: Iterable[list[str]], lookup: dict[str, int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per token block: the ids (int32, ``lookup`` of each token, ``BREAK`` left out) and the
    sentence lengths (summing to the ids' length): lines cut every ``MAX_SENTENCE`` tokens, empty
    ones left out. A line that goes on past a block's end is given with the next block."""
    get = lookup.__getitem__
    tail = np.empty(0, np.int32)
    for tokens in blocks:
        ids = np.fromiter(map(get, tokens), np.int32, count=len(tokens))
        ends = np.flatnonzero(ids == BREAK_ID)
        ids = np.concatenate([tail, ids[ids != BREAK_ID]])
        lines = np.diff(ends, prepend=-1) - 1  # tokens of each line ended in this block
        if len(lines):
            lines[0] += len(tail)
        done = int(lines.sum())
        full = (len(ids) - done) // MAX_SENTENCE  # whole sentences of the unfinished line
        split = done + full * MAX_SENTENCE
        tail = ids[split:]
        yield ids[:split], np.concatenate([_cut(lines), np.full(full, MAX_SENTENCE, np.int64)])
    if len(tail):
        yield tail, np.array([len(tail)], np.int64)


def _cut(lines: np.ndarray) -> np.ndarray:
    """Line lengths as sentence lengths of at most ``MAX_SENTENCE`` (empty lines give none)."""
    pieces = -(-lines // MAX_SENTENCE)
    lengths = np.full(int(pieces.sum()), MAX_SENTENCE, np.int64)
    has = pieces > 0
    lengths[np.cumsum(pieces)[has] - 1] = (lines - (pieces - 1) * MAX_SENTENCE)[has]
    return lengths


def scan(blocks: Iterable[list[str]], min_count: int = 5, max_vocab_size: int | None = None,
         cache_words: int = 0) -> tuple[Vocab, list[tuple[np.ndarray, np.ndarray]] | None]:
    """Count words in one pass over token blocks, with gensim's vocabulary rules, and keep the
    encoded corpus (ids of the vocabulary, -1 for a dropped word, and sentence lengths) while it
    holds at most ``cache_words`` words, so that training need not read and tokenise it again.
    With ``max_vocab_size`` counting prunes (and so forgets) rare words: the corpus is not kept.

    >>> vocab, cache = scan([["a", "b", "a", BREAK, "a", "c"]], min_count=2, cache_words=100)
    >>> vocab.words, cache[0][0].tolist(), cache[0][1].tolist()
    (['a'], [0, -1, 0, 0, -1], [3, 2])
    """
    if max_vocab_size is not None:
        return _pruned_vocab(blocks, min_count, max_vocab_size), None
    ids = WordIds()
    counts = np.zeros(0, np.int64)
    uncounted: list[np.ndarray] = []
    cache: list[tuple[np.ndarray, np.ndarray]] | None = []
    total = 0
    for block, lengths in encode_blocks(blocks, ids):
        total += len(block)
        uncounted.append(block)
        if cache is not None:
            cache.append((block, lengths))
            if total > cache_words:
                cache = None
        if sum(map(len, uncounted)) >= max(len(counts), 1 << 22):  # bincount's cost is the vocabulary's size
            counts, uncounted = _add_counts(counts, uncounted, ids.next), []
    counts = _add_counts(counts, uncounted, ids.next)
    del ids[BREAK]
    vocab, kept = _sorted_vocab(list(ids), counts, total, min_count)
    if cache is not None:
        remap = np.full(ids.next, -1, np.int32)
        remap[kept] = np.arange(len(kept), dtype=np.int32)
        for block, _ in cache:
            block[:] = remap[block]
    return vocab, cache


def _add_counts(counts: np.ndarray, blocks: list[np.ndarray], size: int) -> np.ndarray:
    if not blocks:
        return counts
    return np.concatenate([counts, np.zeros(size - len(counts), np.int64)]) + np.bincount(
        np.concatenate(blocks), minlength=size)


def _pruned_vocab(blocks: Iterable[list[str]], min_count: int, max_vocab_size: int) -> Vocab:
    """Counting with gensim's pruning: over ``max_vocab_size`` words, drop those seen at most once,
    then at most twice, and so on (after each block, until the vocabulary fits)."""
    counts: Counter[str] = Counter()
    total, min_reduce = 0, 1
    for block in blocks:
        counts.update(block)
        total += len(block) - counts.pop(BREAK, 0)
        while len(counts) > max_vocab_size:
            counts = Counter({w: c for w, c in counts.items() if c > min_reduce})
            min_reduce += 1
    return _sorted_vocab(list(counts), np.fromiter(counts.values(), np.int64, count=len(counts)), total,
                         min_count)[0]


def _sorted_vocab(words: list[str], counts: np.ndarray, total: int, min_count: int) -> tuple[Vocab, np.ndarray]:
    """The vocabulary of words (in order of first appearance) with their counts, and the positions
    in ``words`` of its words: by decreasing count, ties with the later first appearance first
    (the order gensim gives), rarer than ``min_count`` left out."""
    order = np.lexsort((-np.arange(len(words)), -counts))
    order = order[counts[order] >= min_count]
    if not len(order):
        if total == 0:
            raise ValueError("the corpus is empty: no words found")
        raise ValueError(f"no word occurs min_count={min_count} times ({total} words, {len(words)} distinct); "
                         "lower --min-count")
    return Vocab([words[i] for i in order.tolist()], counts[order], total), order


def build_vocab(
    sentences: Iterable[list[str]], min_count: int = 5, max_vocab_size: int | None = None,
) -> Vocab:
    """Count words in one pass over ``sentences`` (lists of tokens).

    >>> build_vocab([["a", "b", "a"], ["a", "c"]], min_count=2).words
    ['a']
    """
    return scan(sentence_blocks(sentences), min_count, max_vocab_size)[0]
