"""Skip-gram and CBOW with negative sampling on the CPU: the driver of the compiled loops in
:mod:`multissl.word2vec.kernels`. One pass over the corpus counts the vocabulary and keeps the
encoded corpus (4 bytes a word) for the epochs, which then only train. Defaults are gensim's.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from multissl.word2vec import kernels
from multissl.word2vec.corpus import Corpus, SentenceCorpus
from multissl.word2vec.vocab import Vocab, encode_blocks, scan

BLOCKS_PER_THREAD = 8  # runs of sentences per thread and job, taken by whichever thread is free

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
    """Threads (at most the CPU cores this process may use)."""

    chunk_words: int = 500_000
    """Words per parallel job (the learning rate falls sentence by sentence within it)."""

    cache_words: int = 250_000_000
    """Words of encoded corpus kept in memory between epochs (4 bytes each); a larger corpus is read
    and tokenised again every epoch."""

    def learning_rate(self, progress: float) -> float:
        """alpha after ``progress`` (0 to 1) of the run: linear from ``alpha`` to ``min_alpha``."""
        return max(self.min_alpha, self.alpha - (self.alpha - self.min_alpha) * progress)

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


def keep_thresholds(counts: np.ndarray, sample: float) -> np.ndarray:
    """:func:`keep_probabilities` as 32-bit thresholds for the kernels' draws (2**32: always kept)."""
    if sample <= 0:
        return np.full(len(counts), 1 << 32, np.uint64)
    threshold = sample * counts.sum()
    p = (np.sqrt(counts / threshold) + 1) * (threshold / counts)
    return np.where(p >= 1, 2.0**32, np.floor(p * 2.0**32)).astype(np.uint64)


Job = tuple[np.ndarray, np.ndarray, int]
"""Tokens of the vocabulary (int32), sentence offsets into them (int64), raw words they came from."""


def jobs(encoded: Iterable[tuple[np.ndarray, np.ndarray]], chunk_words: int) -> Iterator[Job]:
    """Encoded blocks (ids, -1 for a dropped word, and sentence lengths) grouped into jobs of at
    least ``chunk_words`` raw words, dropped words left out."""
    ids, lengths, raw = [], [], 0
    for block, block_lengths in encoded:
        ids.append(block)
        lengths.append(block_lengths)
        raw += len(block)
        if raw >= chunk_words:
            yield _job(ids, lengths)
            ids, lengths, raw = [], [], 0
    if raw:
        yield _job(ids, lengths)


def _job(ids: list[np.ndarray], lengths: list[np.ndarray]) -> Job:
    flat, sizes = np.concatenate(ids), np.concatenate(lengths)
    known = flat >= 0
    owner = np.repeat(np.arange(len(sizes)), sizes)
    kept = np.bincount(owner[known], minlength=len(sizes))
    return flat[known], np.r_[0, np.cumsum(kept)].astype(np.int64), len(flat)


def _blocks(offsets: np.ndarray, n: int) -> np.ndarray:
    """About ``n`` runs of whole sentences with equal numbers of tokens."""
    cuts = np.searchsorted(offsets, np.linspace(0, offsets[-1], n + 1), side="right") - 1
    cuts[0], cuts[-1] = 0, len(offsets) - 1
    return np.unique(cuts)


def train_word2vec(
    sentences: Callable[[], Iterable[list[str]]] | Corpus, cfg: Word2VecConfig, vocab: Vocab | None = None,
    progress: bool = True,
) -> Word2VecResult:
    """Train on a :class:`~multissl.word2vec.corpus.Corpus`, or on ``sentences()`` (token lists).
    One pass counts the vocabulary and keeps the encoded corpus in memory while it holds at most
    ``cfg.cache_words`` words (else each epoch reads it again; with ``vocab`` given, the first epoch
    encodes it).

    >>> result = train_word2vec(lambda: [["a", "b", "c"]] * 50, Word2VecConfig(min_count=1, dim=8))
    >>> result.vectors.shape
    (3, 8)
    """
    from tqdm import tqdm

    cfg.validate()
    corpus = sentences if hasattr(sentences, "token_blocks") else SentenceCorpus(sentences)
    t0 = time.perf_counter()
    cached: list[Job] | None = None
    if vocab is None:
        vocab, encoded = scan(corpus.token_blocks(), cfg.min_count, cfg.max_vocab_size, cfg.cache_words)
        cached = None if encoded is None else list(jobs(encoded, cfg.chunk_words))
        del encoded
    log.info("word2vec: %d words in the vocabulary, %d words of text%s", len(vocab), vocab.total_words,
             "" if cached is not None else "; the corpus is read again every epoch")
    rng = np.random.default_rng(cfg.seed)
    syn0 = ((rng.random((len(vocab), cfg.dim), dtype=np.float32) - 0.5) / cfg.dim).astype(np.float32)
    syn1 = np.zeros_like(syn0)
    accept, alias = kernels.alias_table(vocab.counts.astype(np.float64) ** cfg.ns_exponent)
    keep = keep_thresholds(vocab.counts, cfg.sample)
    sig, softplus = kernels.sigmoid_tables()
    threads = max(1, min(cfg.workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                         else os.cpu_count() or 1))
    total = vocab.total_words * cfg.epochs
    done, loss_sum, pair_sum = 0, 0.0, 0
    bar = tqdm(total=total, unit="word", unit_scale=True, disable=not progress, desc="word2vec")
    t_train = time.perf_counter()

    def finish(raw: int, alpha: float, futures: list[Future]) -> None:
        nonlocal loss_sum, pair_sum
        results = [f.result() for f in futures]
        loss, pairs = sum(r[0] for r in results), sum(r[1] for r in results)
        loss_sum, pair_sum = loss_sum + loss, pair_sum + pairs
        bar.update(raw)
        bar.set_postfix(lr=f"{alpha:.5f}", loss=f"{loss / max(pairs, 1):.4f}", refresh=False)

    with ThreadPoolExecutor(threads, thread_name_prefix="word2vec") as pool:
        for epoch in range(cfg.epochs):
            keeping = cached is None and vocab.total_words <= cfg.cache_words
            source = cached if cached is not None else jobs(encode_blocks(corpus.token_blocks(), vocab.lookup),
                                                            cfg.chunk_words)
            kept: list[Job] = []
            key, first = np.uint64(kernels.epoch_seed(cfg.seed, epoch)), 0
            in_flight: deque[tuple[int, float, list[Future]]] = deque()
            for tokens, offsets, raw in source:  # a job's blocks run while the next job is read
                if keeping:
                    kept.append((tokens, offsets, raw))
                blocks = _blocks(offsets, threads * BLOCKS_PER_THREAD)
                a0, a1 = cfg.learning_rate(done / total), cfg.learning_rate((done + raw) / total)
                in_flight.append((raw, a1, [
                    pool.submit(kernels.train_sentences, tokens, offsets, lo, hi, key, np.int64(first), syn0, syn1,
                                accept, alias, keep, sig, softplus, np.float64(a0), np.float64(a1),
                                np.int64(cfg.window), np.int64(cfg.negative), bool(cfg.sg))
                    for lo, hi in zip(blocks[:-1], blocks[1:], strict=True)]))
                first += len(offsets) - 1
                done += raw
                while len(in_flight) > 1:
                    finish(*in_flight.popleft())
            while in_flight:
                finish(*in_flight.popleft())
            if keeping:
                cached = kept
    train_seconds = time.perf_counter() - t_train
    bar.close()
    seconds = time.perf_counter() - t0
    stats = {"words": float(done), "seconds": seconds, "words_per_second": done / max(seconds, 1e-9),
             "train_words_per_second": done / max(train_seconds, 1e-9),
             "loss_per_pair": loss_sum / max(pair_sum, 1), "pairs": float(pair_sum)}
    return Word2VecResult(vocab, syn0, cfg, stats)
