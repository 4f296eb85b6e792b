"""Skip-gram and CBOW with negative sampling on the CPU.

The inner loops are compiled with numba and run lock-free over sentences on all threads (Hogwild),
as gensim's Cython and the original C tool do: per-pair updates of 100-dimensional rows are what the
algorithm is, and batching them into tensor ops would change it (summed duplicate updates) and be
slower on a CPU. Defaults are gensim's.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numba
import numpy as np
from numba import njit, prange

from multissl.word2vec.vocab import Vocab, build_vocab

log = logging.getLogger(__name__)


@dataclass
class Word2VecConfig:
    """word2vec hyper-parameters (gensim's defaults)."""

    sg: bool = False
    """True: skip-gram; False: CBOW (context mean predicts the centre word)."""

    dim: int = 100
    """Vector size."""

    window: int = 5
    """Maximum distance between centre and context words (shrunk at random per centre word)."""

    negative: int = 5
    """Noise words per positive pair."""

    ns_exponent: float = 0.75
    """Exponent of the unigram noise distribution."""

    min_count: int = 5
    """Words rarer than this are dropped."""

    max_vocab_size: int | None = None
    """Cap on distinct words held while counting (None: no cap)."""

    sample: float = 1e-3
    """Frequent-word subsampling threshold (0 disables it)."""

    alpha: float = 0.025
    """Initial learning rate, decayed linearly to ``min_alpha`` over the run."""

    min_alpha: float = 1e-4
    """Final learning rate."""

    epochs: int = 5
    """Passes over the corpus."""

    seed: int = 1
    """Seed for the initial vectors and the sampling."""

    workers: int = 2
    """Threads."""

    chunk_words: int = 50_000
    """Words per parallel job; the learning rate is updated between jobs."""

    def validate(self) -> None:
        for key in ("dim", "window", "epochs", "min_count", "workers", "chunk_words"):
            if getattr(self, key) < 1:
                raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        if self.negative < 1:
            raise ValueError(f"--negative must be >= 1, got {self.negative}")
        if not 0 < self.alpha or self.min_alpha > self.alpha:
            raise ValueError(f"--alpha must be > 0 and >= --min-alpha, got {self.alpha} and {self.min_alpha}")


@dataclass
class Word2VecResult:
    """Trained vectors and what training measured."""

    vocab: Vocab
    vectors: np.ndarray
    config: Word2VecConfig
    stats: dict[str, float] = field(default_factory=dict)


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """gensim's subsampling: the chance that an occurrence of each word is kept.

    >>> keep_probabilities(np.array([1000, 1]), 1e-3).round(3).tolist()
    [0.033, 1.0]
    """
    if sample <= 0:
        return np.ones(len(counts), dtype=np.float32)
    threshold = sample * counts.sum()
    p = (np.sqrt(counts / threshold) + 1) * (threshold / counts)
    return np.minimum(p, 1.0).astype(np.float32)


def noise_table(counts: np.ndarray, exponent: float) -> np.ndarray:
    """Cumulative unigram^exponent distribution, for sampling noise words by binary search."""
    p = counts.astype(np.float64) ** exponent
    cum = np.cumsum(p)
    return cum / cum[-1]


@njit(fastmath=True, nogil=True, cache=True)
def _negative_step(l1, syn1, target, cum, negative, alpha, work):  # pragma: no cover (compiled)
    """One positive and ``negative`` noise updates of the output rows for input vector ``l1``;
    accumulates the input's gradient in ``work`` and returns the loss."""
    loss = 0.0
    dim = l1.shape[0]
    for d in range(negative + 1):
        if d == 0:
            word, label = target, 1.0
        else:
            word = np.searchsorted(cum, np.random.random())
            if word == target:
                continue
            label = 0.0
        row = syn1[word]
        f = 0.0
        for k in range(dim):
            f += l1[k] * row[k]
        if f > 20.0:
            f = 20.0
        elif f < -20.0:
            f = -20.0
        sig = 1.0 / (1.0 + math.exp(-f))
        loss -= math.log(sig + 1e-7) if label > 0 else math.log(1.0 - sig + 1e-7)
        g = (label - sig) * alpha
        for k in range(dim):
            work[k] += g * row[k]
            row[k] += g * l1[k]
    return loss


@njit(parallel=True, fastmath=True, cache=True)
def _train_chunk(tokens, offsets, syn0, syn1, cum, keep, alpha, window, negative, sg, losses, pairs):
    # pragma: no cover (compiled)
    dim = syn0.shape[1]
    for s in prange(offsets.shape[0] - 1):
        start, end = offsets[s], offsets[s + 1]
        buf = np.empty(end - start, np.int64)
        n = 0
        for i in range(start, end):
            w = tokens[i]
            if keep[w] >= 1.0 or np.random.random() < keep[w]:
                buf[n] = w
                n += 1
        work = np.empty(dim, np.float32)
        neu1 = np.empty(dim, np.float32)
        loss, count = 0.0, 0
        for pos in range(n):
            b = np.random.randint(0, window)
            lo = max(0, pos - window + b)
            hi = min(n, pos + window + 1 - b)
            if sg:
                for j in range(lo, hi):
                    if j == pos:
                        continue
                    work[:] = 0.0
                    loss += _negative_step(syn0[buf[j]], syn1, buf[pos], cum, negative, alpha, work)
                    row = syn0[buf[j]]
                    for k in range(dim):
                        row[k] += work[k]
                    count += 1
            else:
                neu1[:] = 0.0
                c = 0
                for j in range(lo, hi):
                    if j != pos:
                        row = syn0[buf[j]]
                        for k in range(dim):
                            neu1[k] += row[k]
                        c += 1
                if c == 0:
                    continue
                for k in range(dim):
                    neu1[k] /= c
                work[:] = 0.0
                loss += _negative_step(neu1, syn1, buf[pos], cum, negative, alpha, work)
                for j in range(lo, hi):
                    if j != pos:
                        row = syn0[buf[j]]
                        for k in range(dim):
                            row[k] += work[k]
                count += 1
        losses[s] = loss
        pairs[s] = count


@njit(cache=True)
def _seed(seed):  # pragma: no cover (compiled)
    np.random.seed(seed)


def _chunks(sentences: Iterable[list[str]], vocab: Vocab, chunk_words: int):
    """(token ids, sentence offsets, raw words) per job of about ``chunk_words`` raw words; words
    out of the vocabulary are dropped. Encoding is one pass of C-level dict lookups per job."""
    lookup = vocab.lookup.__getitem__
    batch: list[list[str]] = []
    raw = 0
    for sentence in sentences:
        batch.append(sentence)
        raw += len(sentence)
        if raw >= chunk_words:
            yield _encode(batch, lookup, raw)
            batch, raw = [], 0
    if raw:
        yield _encode(batch, lookup, raw)


def _encode(batch: list[list[str]], lookup: Callable[[str], int], raw: int) -> tuple[np.ndarray, np.ndarray, int]:
    flat = np.fromiter(map(lookup, itertools.chain.from_iterable(batch)), dtype=np.int64, count=raw)
    lengths = np.fromiter(map(len, batch), dtype=np.int64, count=len(batch))
    known = flat >= 0
    owner = np.repeat(np.arange(len(batch)), lengths)
    kept = np.bincount(owner[known], minlength=len(batch))
    return flat[known], np.r_[0, np.cumsum(kept)].astype(np.int64), raw


def train_word2vec(
    sentences: Callable[[], Iterable[list[str]]], cfg: Word2VecConfig, vocab: Vocab | None = None,
    progress: bool = True,
) -> Word2VecResult:
    """Train on ``sentences()`` (called once to count the vocabulary, then once per epoch, so the
    corpus is streamed and never held in memory).

    >>> result = train_word2vec(lambda: [["a", "b", "c"]] * 50, Word2VecConfig(min_count=1, dim=8))
    >>> result.vectors.shape
    (3, 8)
    """
    from tqdm.auto import tqdm

    cfg.validate()
    t0 = time.perf_counter()
    vocab = vocab or build_vocab(sentences(), cfg.min_count, cfg.max_vocab_size)
    rng = np.random.default_rng(cfg.seed)
    syn0 = ((rng.random((len(vocab), cfg.dim), dtype=np.float32) - 0.5) / cfg.dim).astype(np.float32)
    syn1 = np.zeros_like(syn0)
    cum = noise_table(vocab.counts, cfg.ns_exponent)
    keep = keep_probabilities(vocab.counts, cfg.sample)
    numba.set_num_threads(min(cfg.workers, numba.config.NUMBA_NUM_THREADS))
    _seed(cfg.seed)
    total = vocab.total_words * cfg.epochs
    done, loss_sum, pair_sum, train_seconds = 0, 0.0, 0, 0.0
    bar = tqdm(total=total, unit="word", unit_scale=True, disable=not progress, desc="word2vec")
    for _epoch in range(cfg.epochs):
        for tokens, offsets, raw in _chunks(sentences(), vocab, cfg.chunk_words):
            alpha = max(cfg.min_alpha, cfg.alpha - (cfg.alpha - cfg.min_alpha) * done / total)
            losses = np.zeros(len(offsets) - 1)
            pairs = np.zeros(len(offsets) - 1, dtype=np.int64)
            t = time.perf_counter()
            _train_chunk(tokens, offsets, syn0, syn1, cum, keep, np.float32(alpha), cfg.window, cfg.negative,
                         cfg.sg, losses, pairs)
            train_seconds += time.perf_counter() - t
            done += raw
            loss_sum, pair_sum = loss_sum + losses.sum(), pair_sum + int(pairs.sum())
            bar.update(raw)
            bar.set_postfix(lr=f"{alpha:.5f}", loss=f"{losses.sum() / max(pairs.sum(), 1):.4f}")
    bar.close()
    seconds = time.perf_counter() - t0
    stats = {"words": float(done), "seconds": seconds, "words_per_second": done / max(seconds, 1e-9),
             "train_words_per_second": done / max(train_seconds, 1e-9),
             "loss_per_pair": loss_sum / max(pair_sum, 1), "pairs": float(pair_sum)}
    return Word2VecResult(vocab, syn0, cfg, stats)
