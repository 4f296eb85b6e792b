"""Property-based checks of every masking generator: any length from 0 up, any ratio, any span."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from multissl.data.masking import BERT_NONE, MaskConfig, bert_mask, multi_mask, sample_mask

SETTINGS = settings(max_examples=300, deadline=None)
probs = st.floats(0.0, 0.95, allow_nan=False)
seeds = st.integers(0, 2**32 - 1)


@SETTINGS
@given(kind=st.sampled_from(["random", "span", "block", "inverse_block", "bert", "none"]),
       length=st.integers(0, 400), prob=probs, width=st.integers(1, 16), seed=seeds)
def test_sequence_masks(kind, length, prob, width, seed):
    cfg = MaskConfig(kind=kind, prob=prob, length=width, adjust=0.05)
    mask = sample_mask(cfg, (length,), np.random.default_rng(seed))
    assert mask.shape == (length,) and mask.dtype == bool
    expected = {"random": length - int(length * (1 - prob)), "block": int(length * prob),
                "inverse_block": length - int(length * (1 - prob)), "none": 0}
    if kind in expected:
        assert int(mask.sum()) == expected[kind]  # the exact-ratio kinds are exact at every length


@SETTINGS
@given(kind=st.sampled_from(["random", "block", "inverse_block", "beit"]), h=st.integers(0, 24),
       w=st.integers(0, 24), prob=probs, width=st.integers(1, 20), seed=seeds)
def test_grid_masks(kind, h, w, prob, width, seed):
    cfg = MaskConfig(kind=kind, prob=prob, length=width, adjust=0.07)
    mask = sample_mask(cfg, (h, w), np.random.default_rng(seed))
    assert mask.shape == (h, w) and mask.dtype == bool
    if kind == "beit":
        assert int(mask.sum()) <= int(round(prob * h * w))  # rectangles never overshoot the target
    elif kind == "block":
        assert int(mask.sum()) == int(h * w * prob)


@SETTINGS
@given(length=st.integers(0, 500), prob=probs, p_mask=st.floats(0, 1), seed=seeds)
def test_bert_selection(length, prob, p_mask, seed):
    codes = bert_mask(length, prob, np.random.default_rng(seed), p_mask, (1 - p_mask) / 2)
    chosen = int((codes != BERT_NONE).sum())
    assert codes.shape == (length,) and set(np.unique(codes)) <= {0, 1, 2, 3}
    assert int(prob * length) <= chosen <= min(length, int(prob * length) + 1)


@SETTINGS
@given(clones=st.integers(1, 8), length=st.integers(0, 64), seed=seeds)
def test_clones_are_independent_and_same_seed_same_masks(clones, length, seed):
    cfg = MaskConfig(kind="random", prob=0.5)
    a = multi_mask(cfg, (length,), clones, np.random.default_rng(seed))
    b = multi_mask(cfg, (length,), clones, np.random.default_rng(seed))
    assert a.shape == (clones, length) and np.array_equal(a, b)
