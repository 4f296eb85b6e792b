"""Masked autoencoders: the loss equals transformers' ViTMAEForPreTraining loss on the same weights,
images and masking; a tiny run draws reconstructions and exports ViTModel plus ViTMAEForPreTraining."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import multissl.methods
from multissl.core.blocks import EncoderConfig
from multissl.core.mae_decoder import MAEDecoderConfig, mae_sincos_2d
from multissl.data.masking import MaskConfig
from multissl.methods.mae import MAE, MAEConfig
from multissl.modalities.vision.data import ImageCollator, eval_transform
from multissl.modalities.vision.model import Vision, VisionConfig
from multissl.recipe import RecipeError, load_recipe
from tests.conftest import ROOT

RECIPE = ROOT / "recipes" / "vision" / "mae-tiny.yaml"
ENC = EncoderConfig(dim=32, depth=2, heads=4, ffn_dim=64, norm="pre", eps=1e-6, dropout=0.0, attention_dropout=0.0)
DEC = MAEDecoderConfig(dim=16, depth=2, heads=2, ffn_dim=32)
TINY_MAE = ["--encoder.dim", "32", "--encoder.depth", "2", "--encoder.heads", "4", "--encoder.ffn_dim", "64",
            "--decoder.dim", "16", "--decoder.depth", "1", "--decoder.heads", "2", "--decoder.ffn_dim", "32",
            "--batch_size", "4", "--max_steps", "4", "--save_steps", "2", "--logging_steps", "2",
            "--report_to", "none", "--warmup_steps", "0", "--health.check_after", "0", "--health.min_pred_var", "0"]


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The method under test in the registry (harmless once multissl.methods registers it)."""
    monkeypatch.setitem(multissl.methods.METHODS, "mae", MAE)


def _model_and_batch(photos, norm_pix):
    cfg = VisionConfig(image_size=32, patch_size=8, mask_embedding=False)
    vision = Vision(cfg)
    torch.manual_seed(0)
    model = MAE(vision, ENC, MAEConfig(norm_pix=norm_pix, decoder=DEC)).eval()
    images = [Image.open(p).convert("RGB") for p in photos[:4]]
    examples = [{"pixel_values": eval_transform(img, cfg), "seed": (0, 0, i)} for i, img in enumerate(images)]
    return model, ImageCollator(MaskConfig(kind="random", prob=0.75), cfg)(examples)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_equals_transformers_vitmae(image_dirs, norm_pix):
    model, batch = _model_and_batch(image_dirs[2], norm_pix)
    mask = batch["mask"]
    assert mask.shape == (4, 16) and (mask.sum(1) == 12).all()
    with torch.no_grad():
        ours = model(**batch)["loss"]
    hf = model.hf_pretraining(MaskConfig(kind="random", prob=0.75))
    assert hf.config.mask_ratio == 0.75 and hf.config.norm_pix_loss is norm_pix
    # ViTMAE keeps the patches of smallest noise: kept ones below 1, masked ones above, in a shuffled order
    noise = mask.float() + torch.rand(mask.shape) * 0.5
    with torch.no_grad():
        out = hf(pixel_values=batch["inputs"]["pixel_values"], noise=noise)
    assert torch.equal(out.mask.bool(), mask)
    with torch.no_grad():
        pred = model.reconstruct(batch["inputs"], mask)[0]
    torch.testing.assert_close(pred, out.logits, rtol=1e-5, atol=1e-5)  # every patch's prediction, not only the loss
    torch.testing.assert_close(ours, out.loss, rtol=1e-5, atol=1e-5)
    print(f"norm_pix={norm_pix}: |ours - ViTMAE| = {abs(float(ours) - float(out.loss)):.2e}")
    # multissl's sin-cos encoder table (row half first) is what the HF model holds, not ViTMAE's own
    ours_pos = model.encoder.context.position_embeddings
    torch.testing.assert_close(hf.vit.embeddings.position_embeddings, ours_pos, rtol=0, atol=0)
    assert not torch.allclose(ours_pos[0], mae_sincos_2d(4, 4, ENC.dim))


def test_mae_needs_a_fixed_count_of_masked_patches():
    with pytest.raises(RecipeError, match="mask.kind"):
        load_recipe(RECIPE, ["--mask.kind", "beit"])
    with pytest.raises(RecipeError, match="decoder.eps"):
        load_recipe(RECIPE, ["--decoder.eps", "1e-12"])


def test_tiny_run_draws_and_exports(tmp_path, image_dirs):
    from transformers import AutoModel, ViTMAEForPreTraining

    from multissl.export.hf import export
    from multissl.train import pretrain

    overrides = [*TINY_MAE, "--data", str(image_dirs[0]), "--output_dir", str(tmp_path / "run")]
    run = pretrain(load_recipe(RECIPE, overrides))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["loss"] > 0 and "pred_var" in rows[-1]
    pngs = sorted(run.glob("reconstruction-*.png"))
    assert [p.name for p in pngs] == ["reconstruction-2.png", "reconstruction-4.png"]
    with Image.open(pngs[-1]) as img:
        img.load()
        assert img.size == (3 * 64, 8 * 64)  # 3 columns of 32 px images drawn at 64 px, 8 sample rows
    out = export(run, tmp_path / "export")
    assert type(AutoModel.from_pretrained(out)).__name__ == "ViTModel"
    whole = ViTMAEForPreTraining.from_pretrained(out / "pretraining").eval()
    assert whole.config.mask_ratio == 0.75 and whole.config.norm_pix_loss
    from multissl.runs import load_run_model

    _, _, model = load_run_model(run)
    torch.testing.assert_close(whole.vit.embeddings.position_embeddings, model.encoder.context.position_embeddings)
    assert "masked autoencoder" in (out / "README.md").read_text()
