"""I-JEPA: the multi-block masks meet the paper's rules; the loss equals a per-image, per-block hand
computation from the model's pieces; the context encoder never sees a target patch; the target
encoder moves only by the EMA; a tiny run on real images exports both encoders as ViTModel."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from multissl.core.blocks import EncoderConfig
from multissl.data.masking import MaskConfig, multiblock_mask
from multissl.methods.ijepa import IJEPA, IJEPAConfig, PredictorConfig
from multissl.modalities.vision.data import ImageCollator, eval_transform
from multissl.modalities.vision.model import Vision, VisionConfig
from multissl.recipe import RecipeError, load_recipe
from tests.conftest import ROOT

RECIPE = ROOT / "recipes" / "vision" / "ijepa-tiny.yaml"
PAPER = MaskConfig(kind="multiblock")  # 4 targets of scale 0.15-0.2, aspect 0.75-1.5; context 0.85-1
ENC = EncoderConfig(dim=32, depth=2, heads=4, ffn_dim=64, norm="pre", eps=1e-6, dropout=0.0, attention_dropout=0.0)
PRED = PredictorConfig(dim=16, depth=2, heads=2, ffn_dim=32)


# --- masks -------------------------------------------------------------------------------------------

def _fits(side: int, grid_side: int) -> tuple[float, float]:
    """The range sqrt(area * ratio) may have had for a block side rounded to ``side`` (a side as long
    as the grid may have been cut to it)."""
    return side - 0.5, math.inf if side == grid_side else side + 0.5


def _drawn_from(h: int, w: int, shape: tuple[int, int], scale: tuple[float, float],
                aspect: tuple[float, float]) -> bool:
    """Whether an h x w block on ``shape`` can come from a scale in ``scale`` and an aspect (height /
    width) in ``aspect``, each side rounded: the area (the product of the unrounded sides) and the
    aspect (their ratio) must meet their ranges."""
    (hl, hh), (wl, wh) = _fits(h, shape[0]), _fits(w, shape[1])
    n = shape[0] * shape[1]
    area_ok = hl * wl <= scale[1] * n and hh * wh >= scale[0] * n
    aspect_ok = hl / wh <= aspect[1] and hh / wl >= aspect[0]
    return area_ok and aspect_ok


@settings(max_examples=150, deadline=None)
@given(h=st.integers(5, 14), w=st.integers(5, 14), targets=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_multiblock_masks_follow_the_paper(h, w, targets, seed):
    cfg = MaskConfig(kind="multiblock", targets=targets)
    context, blocks = multiblock_mask(cfg, (h, w), np.random.default_rng(seed))
    assert context.shape == (h, w) and blocks.shape == (targets, h, w)
    union = blocks.any(0)
    assert not (context & union).any()  # the context never holds a target patch
    assert int(context.sum()) >= cfg.min_context
    for block in blocks:
        rows, cols = np.flatnonzero(block.any(1)), np.flatnonzero(block.any(0))
        bh, bw = len(rows), len(cols)
        assert bh > 0 and bw > 0
        assert block[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all() and int(block.sum()) == bh * bw  # a rectangle
        assert _drawn_from(bh, bw, (h, w), cfg.target_scale, cfg.target_aspect), (bh, bw)
    # the context is a block of unit aspect (cut to the grid) and of scale in range, minus the targets
    found = False
    for side in range(1, max(h, w) + 1):
        bh, bw = min(side, h), min(side, w)
        if not _drawn_from(bh, bw, (h, w), cfg.context_scale, (1.0, 1.0)):
            continue
        for top in range(h - bh + 1):
            for left in range(w - bw + 1):
                square = np.zeros((h, w), dtype=bool)
                square[top:top + bh, left:left + bw] = True
                found = found or np.array_equal(context, square & ~union)
    assert found


def test_multiblock_sizes_spread_over_their_ranges():
    """On the paper's 14 x 14 grid the drawn sizes cover the ranges (not one size for every image)."""
    rng = np.random.default_rng(0)
    draws = [multiblock_mask(PAPER, (14, 14), rng) for _ in range(200)]
    shares = np.array([b.sum() / 196 for _, blocks in draws for b in blocks])
    assert 0.12 < shares.min() < 0.155 and 0.185 < shares.max() < 0.24  # 0.15 and 0.2, each side rounded
    assert len(set(shares.tolist())) >= 4
    contexts = np.array([c.sum() for c, _ in draws])
    assert len(set(contexts.tolist())) > 20 and contexts.min() >= PAPER.min_context


def test_collator_draws_each_image_alone(image_dirs):
    """An image's masks come from its own seed: the same in any batch (so 2 ranks see what 1 rank
    sees, and a resumed run draws what it would have drawn); counts differ between images."""
    cfg = VisionConfig(image_size=32, patch_size=4)
    collate = ImageCollator(PAPER, cfg)
    examples = [{"pixel_values": torch.zeros(3, 32, 32), "seed": (1, 0, i)} for i in range(6)]
    whole, alone = collate(examples), collate(examples[3:4])
    assert whole["mask"].shape == (6, 64) and whole["target_masks"].shape == (6, 4, 64)
    assert torch.equal(whole["mask"][3:4], alone["mask"])
    assert torch.equal(whole["target_masks"][3:4], alone["target_masks"])
    assert len(set((~whole["mask"]).sum(1).tolist())) > 1  # no truncation to the batch's smallest context
    assert not (~whole["mask"][:, None] & whole["target_masks"]).any()
    assert "target_masks" not in ImageCollator(MaskConfig(kind="random", prob=0.5), cfg)(examples)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="mask.target_scale"):
        MaskConfig(kind="multiblock", target_scale=(0.3, 0.2)).validate()
    with pytest.raises(RecipeError, match="mask.kind multiblock"):
        load_recipe(RECIPE, ["--mask.kind", "random"])
    with pytest.raises(RecipeError, match="method.predictor.dim"):
        load_recipe(RECIPE, ["--method.predictor.dim", "30"])
    for key, value in (("target_norm", "batch"), ("export", "both")):
        with pytest.raises(RecipeError, match=f"method.{key}"):
            load_recipe(RECIPE, [f"--method.{key}", value])
    with pytest.raises(ValueError, match="min_context"):
        multiblock_mask(MaskConfig(kind="multiblock", min_context=60), (8, 8), np.random.default_rng(0))


# --- the model -------------------------------------------------------------------------------------

def _model_and_batch(photos, target_norm="layer"):
    cfg = VisionConfig(image_size=32, patch_size=4, mask_embedding=False)
    torch.manual_seed(0)
    model = IJEPA(Vision(cfg), ENC, IJEPAConfig(predictor=PRED, target_norm=target_norm), run_steps=10)
    trained = {n for n, p in model.encoder.named_parameters() if p.requires_grad}  # not the fixed sin-cos table
    with torch.no_grad():  # a target encoder that is not the context encoder, as after training
        for n, p in model.teacher.named_parameters():
            if n in trained:
                p.add_(0.05 * torch.randn_like(p))
    images = [Image.open(p).convert("RGB") for p in photos[:4]]
    examples = [{"pixel_values": eval_transform(img, cfg), "seed": (0, 0, i)} for i, img in enumerate(images)]
    return model.eval(), ImageCollator(PAPER, cfg)(examples)


def _smooth_l1_sum(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.where(d < 1.0, 0.5 * d * d, d - 0.5).sum())


@pytest.mark.parametrize("target_norm", ["layer", "instance"])
def test_loss_equals_a_hand_computation(image_dirs, target_norm):
    """Per image, per target block, without padding: the context encoder on the image's context
    patches alone, the predictor on those and the block's mask tokens; the targets are the target
    encoder's outputs at the block's patches (instance: first normalised per feature over the image's
    64 patches), layer-normalised; smooth-L1 averaged over every value."""
    model, batch = _model_and_batch(image_dirs[2], target_norm)
    with torch.no_grad():
        for w in model.predictor.parameters():  # predictions far from 0, so that the loss depends on them
            w.add_(0.3 * torch.randn_like(w))
        loss = float(model(**batch)["loss"])
        pieces = model.predict(batch["inputs"], batch["mask"], batch["target_masks"])
        enc, p = model.encoder, model.predictor
        preds, ys = [], []
        teacher = model.teacher_encoder().eval().encode(batch["inputs"])[0][:, 1:].double().numpy()
        if target_norm == "instance":
            teacher = (teacher - teacher.mean(1, keepdims=True)) / np.sqrt(teacher.var(1, keepdims=True) + 1e-5)
        pixels = batch["inputs"]["pixel_values"]
        total, values = 0.0, 0
        for i in range(len(pixels)):
            at = np.flatnonzero(~batch["mask"][i].numpy())
            feats, pad = enc.local({"pixel_values": pixels[i:i + 1]})
            x = enc.context(feats, pad)[:, [0, *(1 + at)]]  # CLS and the context patches, with their positions
            for block in enc.blocks:
                x, _ = block(x)
            context = enc.norm(x)[:, 1:]
            for targets in batch["target_masks"][i]:
                where = np.flatnonzero(targets.numpy())
                z = torch.cat([p.embed(context) + p.positions[at], p.mask_token + p.positions[where]], 1)
                for block in p.blocks:
                    z, _ = block(z)
                pred = p.proj(p.norm(z))[0, len(at):].double().numpy()
                y = teacher[i, where]
                preds.append(pred)
                ys.append(y)
                y = (y - y.mean(1, keepdims=True)) / np.sqrt(y.var(1, keepdims=True) + 1e-5)
                total += _smooth_l1_sum(pred, y)
                values += y.size
    assert values > 0 and total / values > 0.1
    # the pieces, in the order (image, block, patch), then the loss
    np.testing.assert_allclose(pieces["pred"].double().numpy(), np.concatenate(preds), rtol=0, atol=1e-5)
    np.testing.assert_allclose(pieces["target"].double().numpy(), np.concatenate(ys), rtol=0, atol=1e-5)
    assert abs(loss - total / values) <= 1e-5 * max(1.0, total / values), (loss, total / values)


def test_the_context_encoder_never_sees_a_target_patch(image_dirs):
    model, batch = _model_and_batch(image_dirs[2])
    pixels, mask = batch["inputs"]["pixel_values"], batch["mask"]
    hidden = mask.view(-1, 1, 8, 1, 8, 1).expand(-1, 3, -1, 4, -1, 4).reshape(pixels.shape)  # per pixel
    assert (batch["target_masks"].any(1) & ~mask).sum() == 0  # every target patch is outside the context
    noisy = torch.where(hidden, torch.randn_like(pixels) * 3, pixels)
    with torch.no_grad():
        ctx, pad, _ = model.encode_context({"pixel_values": pixels}, mask)
        ctx2, pad2, _ = model.encode_context({"pixel_values": noisy}, mask)
        assert torch.equal(pad, pad2)
        torch.testing.assert_close(ctx[~pad], ctx2[~pad], rtol=0, atol=1e-6)
        # ... while a changed context patch does change it, and the target encoder sees the whole image
        visible = torch.where(hidden, pixels, torch.randn_like(pixels) * 3)
        assert not torch.allclose(model.encode_context({"pixel_values": visible}, mask)[0][~pad], ctx[~pad])
        assert not torch.allclose(model.teacher_encode({"pixel_values": noisy})[0],
                                  model.teacher_encode({"pixel_values": pixels})[0])


def test_the_target_encoder_moves_only_by_the_ema(image_dirs):
    model, batch = _model_and_batch(image_dirs[2])
    model.train()
    model(**batch)["loss"].backward()
    teacher = dict(model.teacher.named_parameters())
    assert teacher and all(not t.requires_grad and t.grad is None for t in teacher.values())
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)  # predictor included
    before = {n: t.clone() for n, t in teacher.items()}
    torch.optim.AdamW(model.parameters(), lr=1e-2).step()
    assert all(torch.equal(before[n], t) for n, t in teacher.items())
    student = dict(model.encoder.named_parameters())
    assert any(not torch.equal(before[n], student[n]) for n in before)
    decay = model.ema_step()
    assert decay == pytest.approx(0.996)  # the paper's first momentum
    for n, t in teacher.items():  # fixed tables (the sin-cos positions) are copied, the rest averaged
        s = student[n]
        torch.testing.assert_close(t, decay * before[n] + (1 - decay) * s if s.requires_grad else s, rtol=0, atol=1e-6)


TINY_IJEPA = ["--encoder.dim", "32", "--encoder.depth", "2", "--encoder.heads", "4", "--encoder.ffn_dim", "64",
              "--predictor.dim", "16", "--predictor.heads", "2", "--predictor.ffn_dim", "32",
              "--batch_size", "8", "--max_steps", "6", "--save_steps", "3", "--logging_steps", "2",
              "--report_to", "none", "--warmup_steps", "0", "--health.check_after", "0",
              "--method.ema.max_init_share", "0"]  # the exact schedule: the cap would speed it up in 6 steps


def test_tiny_run_trains_and_exports_both_encoders(tmp_path, image_dirs):
    from transformers import AutoModel

    from multissl.export.hf import export
    from multissl.train import pretrain

    overrides = [*TINY_IJEPA, "--data", str(image_dirs[0]), "--output_dir", str(tmp_path / "run")]
    run = pretrain(load_recipe(RECIPE, overrides))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    for key in ("loss", "target_var", "pred_var", "student_rank", "teacher_rank"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert rows[-1]["ema_decay"] > 0.996
    student = export(run, tmp_path / "student", which="student")  # each export checks its parity
    teacher = export(run, tmp_path / "teacher", which="teacher")
    default = export(run, tmp_path / "default")  # the recipe's method.export: the context encoder
    a, b, c = (AutoModel.from_pretrained(x) for x in (student, teacher, default))
    assert type(a).__name__ == type(b).__name__ == "ViTModel"
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if k.startswith("layers."))  # two encoders, not one
    assert all(torch.equal(sa[k], sc[k]) for k in sa if not k.startswith("pooler."))  # the pooler is untrained
    card = (teacher / "README.md").read_text()
    assert "I-JEPA" in card and "writes the context encoder by default" in card and "the EMA teacher is" in card
    # the paper's choice when the config leaves it at its default
    assert IJEPA(Vision(VisionConfig()), ENC, IJEPAConfig(predictor=PRED)).exported_encoder() == "teacher"
