import numpy as np
import pytest
import torch
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

from multissl.data.masking import (
    BERT_KEEP,
    BERT_MASK,
    BERT_NONE,
    BERT_RANDOM,
    MaskConfig,
    bert_mask,
    block_mask,
    multi_mask,
    random_mask,
    sample_mask,
    span_mask,
)


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("length,prob", [(512, 0.48), (100, 0.5), (7, 0.3), (1, 0.5), (0, 0.5)])
def test_random_mask_is_exact(length, prob):
    m = random_mask(length, prob, rng())
    assert m.shape == (length,)
    assert m.sum() == length - int(length * (1 - prob))


def test_random_mask_is_uniform_over_positions():
    counts = sum(random_mask(50, 0.5, rng(s)).astype(int) for s in range(2000))
    assert abs(counts / 2000 - 0.5).max() < 0.06


def test_span_mask_masks_about_49_percent_like_wav2vec2():
    # data2vec v1 audio: p=0.65, span 10 -> about 49% of frames (reference §1.2)
    ours = np.mean([span_mask(500, 0.65, 10, rng(s)).mean() for s in range(300)])
    assert abs(ours - 0.49) < 0.02
    hf = _compute_mask_indices((300, 500), mask_prob=0.65, mask_length=10, min_masks=1).mean()
    assert abs(ours - hf) < 0.02


def test_span_mask_runs_are_at_least_one_span_long():
    m = span_mask(400, 0.2, 10, rng(3))
    edges = np.flatnonzero(np.diff(np.r_[0, m.astype(int), 0]))
    runs = edges[1::2] - edges[::2]
    assert runs.min() >= 10


def test_span_mask_min_masks_and_short_inputs():
    assert span_mask(30, 0.0, 10, rng(), min_masks=2).sum() >= 10
    assert span_mask(5, 0.65, 10, rng()).sum() == 5  # shorter than a span: all of it
    assert span_mask(0, 0.65, 10, rng()).sum() == 0


@pytest.mark.parametrize("length", [49, 50, 250, 1000])
def test_block_mask_1d_exact_ratio(length):
    # data2vec 2.0 audio: 0.5, length 5, adjust 0.05 -> exactly int(T * 0.5) frames
    for s in range(20):
        m = block_mask((length,), 0.5, 5, rng(s), adjust=0.05)
        assert m.sum() == int(length * 0.5)


def test_block_mask_1d_is_mostly_blocks():
    m = block_mask((1000,), 0.5, 5, rng(1), adjust=0.05)
    edges = np.flatnonzero(np.diff(np.r_[0, m.astype(int), 0]))
    runs = edges[1::2] - edges[::2]
    # the exact-ratio correction adds single frames, but most masked frames lie in whole blocks
    assert runs[runs >= 5].sum() / runs.sum() > 0.75


def test_inverse_block_mask_2d_matches_reference_count():
    # data2vec 2.0 vision: keep 20% in 3x3 blocks with adjust 0.07 -> 157 of 196 masked
    for s in range(20):
        m = block_mask((14, 14), 0.8, 3, rng(s), adjust=0.07, inverse=True)
        assert m.shape == (14, 14) and m.sum() == 157
    large = block_mask((14, 14), 0.75, 3, rng(0), adjust=0.1, inverse=True)
    assert large.sum() == 147


def test_block_mask_2d_exact():
    m = block_mask((16, 16), 0.6, 4, rng(2))
    assert m.sum() == int(256 * 0.6)


def test_bert_mask_statistics():
    codes = np.concatenate([bert_mask(512, 0.15, rng(s)) for s in range(200)])
    selected = codes != BERT_NONE
    assert abs(selected.mean() - 0.15) < 0.005
    chosen = codes[selected]
    assert abs(np.mean(chosen == BERT_MASK) - 0.8) < 0.02
    assert abs(np.mean(chosen == BERT_RANDOM) - 0.1) < 0.02
    assert abs(np.mean(chosen == BERT_KEEP) - 0.1) < 0.02


def test_masks_are_reproducible_and_clones_differ():
    cfg = MaskConfig(kind="block", prob=0.5, length=5, adjust=0.05)
    a = multi_mask(cfg, (100,), 8, rng(7))
    b = multi_mask(cfg, (100,), 8, rng(7))
    assert np.array_equal(a, b)
    assert len({row.tobytes() for row in a}) == 8
    assert (a.sum(1) == 50).all()


def test_sample_mask_kinds():
    r = rng()
    assert sample_mask(MaskConfig(kind="none"), (10,), r).sum() == 0
    assert sample_mask(MaskConfig(kind="inverse_block", prob=0.8, length=3, adjust=0.07), (14, 14), r).sum() == 157
    assert sample_mask(MaskConfig(kind="span", prob=0.65, length=10), (100,), r).dtype == bool
    with pytest.raises(ValueError, match="mask.prob"):
        MaskConfig(prob=1.5).validate()


def test_masks_feed_torch():
    m = torch.from_numpy(multi_mask(MaskConfig(kind="random", prob=0.5), (6,), 2, rng()))
    assert m.dtype == torch.bool and m.shape == (2, 6)
