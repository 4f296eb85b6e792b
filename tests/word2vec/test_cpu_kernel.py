"""The compiled CPU loops against a plain NumPy reference, update for update."""

import numpy as np
import pytest

from multissl.word2vec import kernels
from multissl.word2vec.corpus import Corpus
from multissl.word2vec.train import Word2VecConfig, train_word2vec
from multissl.word2vec.vocab import simple_tokenize
from tests.word2vec import reference


@pytest.fixture(scope="module")
def verses(kjv_rows):
    return [simple_tokenize(r["text"]) for r in kjv_rows[:60]]


def reference_run(sentences, cfg, vocab):
    """The same run through tests/word2vec/reference.py: same initial vectors, schedule and seeds."""
    rng = np.random.default_rng(cfg.seed)
    syn0 = ((rng.random((len(vocab), cfg.dim), dtype=np.float32) - 0.5) / cfg.dim).astype(np.float32)
    syn1 = np.zeros_like(syn0)
    ids = [[vocab.index[w] for w in s if w in vocab.index] for s in sentences if s]
    tokens = np.array([i for s in ids for i in s])
    offsets = np.r_[0, np.cumsum([len(s) for s in ids])]
    accept, alias = kernels.alias_table(vocab.counts.astype(np.float64) ** cfg.ns_exponent)
    keep = reference.keep_thresholds(vocab.counts, cfg.sample)
    assert sum(k < 2**32 for k in keep) >= 10  # subsampling draws are part of what is compared
    loss, units = 0.0, 0
    for epoch in range(cfg.epochs):  # one job per epoch: the corpus is smaller than chunk_words
        a0, a1 = cfg.learning_rate(epoch / cfg.epochs), cfg.learning_rate((epoch + 1) / cfg.epochs)
        lo, u = reference.train_epoch(tokens, offsets, syn0, syn1, accept, alias, keep, a0, a1,
                                      cfg.window, cfg.negative, cfg.sg, reference.epoch_key(cfg.seed, epoch))
        loss, units = loss + lo, units + u
    return syn0, loss, units


@pytest.mark.parametrize("sg", [True, False])
def test_one_thread_equals_the_numpy_reference(verses, sg):
    cfg = Word2VecConfig(sg=sg, dim=16, window=3, negative=4, min_count=2, sample=5e-3, epochs=2, workers=1, seed=3)
    result = train_word2vec(lambda: verses, cfg, progress=False)
    syn0, loss, units = reference_run(verses, cfg, result.vocab)
    assert result.stats["pairs"] == units  # the same windows, subsampling and noise draws
    # float32 either way; the kernels' fused multiply-adds round differently (measured: <= 1.2e-6)
    np.testing.assert_allclose(result.vectors, syn0, rtol=0, atol=1e-5)
    assert np.abs(result.vectors - syn0).max() < 1e-3 * np.abs(syn0).max()
    assert result.stats["loss_per_pair"] == pytest.approx(loss / units, rel=1e-4)


def test_alias_table_draws_the_noise_distribution(kjv_rows):
    counts = np.array(sorted({len(r["text"]) for r in kjv_rows[:3000]}, reverse=True), dtype=np.float64)
    p = counts**0.75 / (counts**0.75).sum()
    accept, alias = kernels.alias_table(counts**0.75)
    n = len(p)
    implied = accept.astype(np.float64) / 2**32 / n  # each bucket: its own word with this mass ...
    np.add.at(implied, alias, (1 - accept.astype(np.float64) / 2**32) / n)  # ... its alias with the rest
    assert np.abs(implied - p).max() < 1e-9 and implied.sum() == pytest.approx(1.0)


def test_streamed_epochs_equal_cached_ones(tmp_path, kjv_file):
    """Re-reading the corpus every epoch (a corpus over cache_words), in small blocks, trains
    exactly as the encoded corpus kept in memory does, and as token lists do."""
    cfg = Word2VecConfig(sg=True, dim=12, epochs=2, workers=1, min_count=3)
    cached = train_word2vec(Corpus([str(kjv_file)]), cfg, progress=False)
    streamed = train_word2vec(Corpus([str(kjv_file)], block_bytes=4096),
                              Word2VecConfig(**{**vars(cfg), "cache_words": 1000}), progress=False)
    lines = kjv_file.read_text().splitlines()
    as_lists = train_word2vec(lambda: [simple_tokenize(line) for line in lines], cfg, progress=False)
    assert cached.vocab.words == streamed.vocab.words == as_lists.vocab.words
    np.testing.assert_array_equal(cached.vectors, streamed.vectors)
    np.testing.assert_array_equal(cached.vectors, as_lists.vectors)
