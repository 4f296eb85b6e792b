"""Property-based checks of the three collators: batches of any size and mix of lengths (from 0 up),
any masking kind and number of clones. Masks must cover real positions only."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multissl.core.adapter import StudentView
from multissl.data.masking import MaskConfig
from multissl.modalities.audio.data import AudioCollator
from multissl.modalities.audio.model import AudioConfig
from multissl.modalities.text.data import TextCollator
from multissl.modalities.text.model import TextConfig
from multissl.modalities.vision.data import ImageCollator
from multissl.modalities.vision.model import VisionConfig

SETTINGS = settings(max_examples=150, deadline=None)
TEXT = TextConfig(max_length=40, vocab_size=50, pad_token_id=1, bos_token_id=0, eos_token_id=2, mask_token_id=3)
seeds = st.tuples(st.integers(0, 9), st.integers(0, 9), st.integers(0, 10**6))


@SETTINGS
@given(rows=st.lists(st.lists(st.integers(0, 49), min_size=0, max_size=40), min_size=1, max_size=6),
       kind=st.sampled_from(["random", "span", "block", "bert"]), prob=st.floats(0.0, 0.9),
       version=st.sampled_from([1, 2]), clones=st.integers(1, 4), seed=seeds)
def test_text_collator(rows, kind, prob, version, clones, seed):
    if kind == "bert":
        version, clones = 1, 1
    collate = TextCollator(MaskConfig(kind=kind, prob=prob, length=3), TEXT, StudentView(version == 1, clones))
    batch = collate([{"input_ids": r, "seed": (*seed, i)} for i, r in enumerate(rows)])
    ids, mask = batch["inputs"]["input_ids"], batch["mask"]
    t = max(len(r) for r in rows)
    assert ids.shape == (len(rows), t) and mask.shape == (len(rows) * clones, t)
    special = torch.isin(ids, torch.tensor([0, 1, 2, 3])).repeat_interleave(clones, 0)
    assert not (mask & special).any()  # never a special token or padding
    plain = ids.repeat_interleave(clones, 0)
    student = batch.get("student_inputs", {"input_ids": plain})["input_ids"]
    assert student.shape == mask.shape
    if version == 1 and TEXT.mask_with == "token":
        assert (student[mask] == 3).all()  # regressed positions show the <mask> token
        changed = (student != plain) & ~mask
        assert not torch.isin(student[changed], torch.tensor([0, 1, 2, 3])).any()  # BERT's random tokens
    else:
        assert torch.equal(student, plain)


@SETTINGS
@given(lengths=st.lists(st.integers(0, 20000), min_size=1, max_size=5), kind=st.sampled_from(["span", "block",
       "inverse_block", "random"]), prob=st.floats(0.0, 0.9), clones=st.integers(1, 4), seed=seeds)
def test_audio_collator(lengths, kind, prob, clones, seed):
    cfg = AudioConfig()
    collate = AudioCollator(MaskConfig(kind=kind, prob=prob, length=5), cfg, clones)
    examples = [{"input_values": np.ones(n, np.float32), "seed": (*seed, i)} for i, n in enumerate(lengths)]
    batch = collate(examples)
    wav, att, mask = batch["inputs"]["input_values"], batch["inputs"]["attention_mask"], batch["mask"]
    assert wav.shape == att.shape == (len(lengths), max(lengths))
    assert att.sum(1).tolist() == lengths and (wav[att == 0] == 0).all()  # zeros beyond each waveform
    frames = [max(0, cfg.frames(n)) for n in lengths]
    assert mask.shape == (len(lengths) * clones, max(frames))
    for row in range(mask.shape[0]):
        assert not mask[row, frames[row // clones]:].any()  # no mask on padded frames


@SETTINGS
@given(size=st.sampled_from([8, 16, 32]), batch=st.integers(1, 6), kind=st.sampled_from(["random", "block",
       "inverse_block", "beit"]), prob=st.floats(0.0, 0.9), clones=st.integers(1, 4), seed=seeds)
def test_image_collator(size, batch, kind, prob, clones, seed):
    cfg = VisionConfig(image_size=size, patch_size=4)
    collate = ImageCollator(MaskConfig(kind=kind, prob=prob, length=2, adjust=0.07), cfg, clones)
    out = collate([{"pixel_values": torch.zeros(3, size, size), "seed": (*seed, i)} for i in range(batch)])
    assert out["inputs"]["pixel_values"].shape == (batch, 3, size, size)
    assert out["mask"].shape == (batch * clones, (size // 4) ** 2) and out["mask"].dtype == torch.bool
