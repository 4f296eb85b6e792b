"""The MAE building blocks against transformers' ViTMAEForPreTraining: patch layout, loss, decoder."""

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from multissl.core.losses.mae import mae_loss, patchify, unpatchify
from multissl.core.mae_decoder import (
    MAEDecoder,
    MAEDecoderConfig,
    from_hf_decoder_state,
    mae_sincos_2d,
    to_hf_decoder_state,
)
from multissl.modalities.vision.model import sincos_2d

IMAGE, PATCH = 32, 4
GRID = (IMAGE // PATCH, IMAGE // PATCH)
L = GRID[0] * GRID[1]


def photos(size: int = IMAGE) -> torch.Tensor:
    """Two real photos (sklearn's china and flower), resized, ImageNet-normalised: (2, 3, size, size)."""
    out = []
    for name in ("china.jpg", "flower.jpg"):
        img = Image.fromarray(load_sample_image(name)).resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (torch.stack(out) - mean[:, None, None]) / std[:, None, None]


def hf_model(norm_pix: bool = False) -> ViTMAEForPreTraining:
    """A tiny ViTMAE with non-trivial decoder weights and the pretrained sin-cos tables (a fresh
    transformers 5 model leaves them at zero)."""
    config = ViTMAEConfig(
        image_size=IMAGE, patch_size=PATCH, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
        decoder_intermediate_size=64, mask_ratio=0.75, hidden_act="gelu", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, norm_pix_loss=norm_pix,
    )
    torch.manual_seed(0)
    model = ViTMAEForPreTraining(config).eval()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.decoder.initialize_weights(L)  # sin-cos decoder_pos_embed, N(0, 0.02) mask token
        table = build_2d_sinusoidal_position_embedding(*GRID, embed_dim=32, cls_token=True)
        model.vit.embeddings.position_embeddings.copy_(torch.cat([table[:, 16:], table[:, :16]], 1)[None])
    return model


def decoder_cfg(config: ViTMAEConfig) -> MAEDecoderConfig:
    return MAEDecoderConfig(dim=config.decoder_hidden_size, depth=config.decoder_num_hidden_layers,
                            heads=config.decoder_num_attention_heads, ffn_dim=config.decoder_intermediate_size,
                            eps=config.layer_norm_eps)


def test_patchify_matches_vitmae_and_unpatchify_inverts_it():
    model = hf_model()
    pixels = photos()
    ours = patchify(pixels, PATCH)
    assert ours.shape == (2, L, PATCH * PATCH * 3)
    assert torch.equal(ours, model.patchify(pixels))
    assert torch.equal(unpatchify(ours, GRID, PATCH), pixels)
    assert torch.equal(unpatchify(ours, GRID, PATCH), model.unpatchify(ours))
    # non-square: rows of patches first, then columns
    wide = torch.randn(1, 3, 8, 12)
    assert torch.equal(patchify(wide, 4)[0, 1], wide[0, :, 0:4, 4:8].permute(1, 2, 0).flatten())
    assert torch.equal(unpatchify(patchify(wide, 4), (2, 3), 4), wide)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(wide, 5)


def test_mae_positions_are_vitmae_decoder_table_not_sincos_2d():
    model = hf_model()
    ours = mae_sincos_2d(*GRID, 32)
    torch.testing.assert_close(ours[None], model.decoder.decoder_pos_embed, rtol=0, atol=1e-7)
    assert ours.shape == (1 + L, 32) and torch.equal(ours[0], torch.zeros(32))
    # multissl's vision sincos_2d has the row half first: the same numbers, halves swapped
    plain = sincos_2d(*GRID, 32)
    assert not torch.allclose(ours[1:], plain)
    torch.testing.assert_close(ours[1:], torch.cat([plain[:, 16:], plain[:, :16]], 1), rtol=0, atol=1e-7)
    # non-square grids follow transformers' builder (its rotation puts the width half first)
    table = build_2d_sinusoidal_position_embedding(3, 5, embed_dim=16, cls_token=True)
    torch.testing.assert_close(mae_sincos_2d(3, 5, 16), torch.cat([table[:, 8:], table[:, :8]], 1),
                               rtol=0, atol=1e-7)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_matches_vitmae_loss(norm_pix):
    model = hf_model(norm_pix)
    pixels = photos()
    noise = torch.rand(2, L, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(pixels, noise=noise)
    assert 0 < out.mask.sum() < out.mask.numel()
    for mask in (out.mask, out.mask.bool()):
        loss = mae_loss(out.logits, patchify(pixels, PATCH), mask, norm_pix=norm_pix)
        torch.testing.assert_close(loss, out.loss, rtol=1e-6, atol=1e-7)
    # only masked patches count
    other = out.logits.clone()
    other[~out.mask.bool()] += 5.0
    torch.testing.assert_close(mae_loss(other, patchify(pixels, PATCH), out.mask, norm_pix), out.loss)
    assert mae_loss(out.logits, patchify(pixels, PATCH), torch.zeros(2, L), norm_pix).item() == 0.0


def test_decoder_matches_vitmae_decoder():
    model = hf_model(norm_pix=True)
    pixels = photos()
    noise = torch.rand(2, L, generator=torch.Generator().manual_seed(2))
    cfg = decoder_cfg(model.config)
    dec = MAEDecoder(cfg, enc_dim=32, grid=GRID, patch=PATCH).eval()
    hf_state = model.decoder.state_dict()
    dec.load_state_dict(from_hf_decoder_state(hf_state, cfg))
    with torch.no_grad():
        out = model(pixels, noise=noise)
        enc = model.vit(pixels, noise=noise)
        # HF keeps patches in shuffled order: ids_keep = argsort(noise)[:, :len_keep]
        k = int(L * (1 - model.config.mask_ratio))
        ids_keep = noise.argsort(1)[:, :k]
        keep = torch.zeros(2, L, dtype=torch.bool).scatter(1, ids_keep, True)
        assert torch.equal(keep, out.mask == 0)
        order = ids_keep.argsort(1)  # reorder the kept tokens into their original position order
        patches = enc.last_hidden_state[:, 1:].gather(1, order[..., None].expand(-1, -1, 32))
        kept = torch.cat([enc.last_hidden_state[:, :1], patches], 1)
        pred = dec(kept, keep)
    assert pred.shape == out.logits.shape == (2, L, PATCH * PATCH * 3)
    torch.testing.assert_close(pred, out.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(mae_loss(pred, patchify(pixels, PATCH), keep.logical_not()), out.loss,
                               rtol=1e-5, atol=1e-6)
    # the fixed positions are a non-persistent buffer; the rest trains
    assert "positions" not in dec.state_dict() and not dec.positions.requires_grad
    assert dec.mask_token.requires_grad
    with pytest.raises(ValueError, match="exactly 16"):
        dec(kept, keep.roll(1, dims=0) & keep.roll(1, dims=1))


def test_decoder_state_round_trips_and_loads_into_hf():
    model = hf_model()
    cfg = decoder_cfg(model.config)
    hf_state = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    ours = from_hf_decoder_state(hf_state, cfg)
    back = to_hf_decoder_state(ours, cfg, GRID)
    assert back.keys() == hf_state.keys()
    for key, t in hf_state.items():
        torch.testing.assert_close(back[key], t, rtol=0, atol=1e-7 if key == "decoder_pos_embed" else 0)
    dec = MAEDecoder(cfg, enc_dim=32, grid=GRID, patch=PATCH)
    again = from_hf_decoder_state(to_hf_decoder_state(dec.state_dict(), cfg), cfg)
    assert again.keys() == dec.state_dict().keys()
    assert all(torch.equal(again[k], v) for k, v in dec.state_dict().items())
    model.decoder.load_state_dict(to_hf_decoder_state(dec.state_dict(), cfg, GRID), strict=True)
    # transformers 4 / Hub checkpoint layer names are accepted too
    legacy = {k.replace("attention.q_proj", "attention.attention.query").replace("attention.o_proj",
              "attention.output.dense").replace("mlp.fc1", "intermediate.dense").replace("mlp.fc2", "output.dense")
              : v for k, v in hf_state.items()}
    assert any("attention.attention.query" in k for k in legacy)
    assert all(torch.equal(from_hf_decoder_state(legacy, cfg)[k], v) for k, v in ours.items())
    with pytest.raises(ValueError, match="decoder_pred.weight"):
        from_hf_decoder_state({k: v for k, v in hf_state.items() if k != "decoder_pred.weight"}, cfg)
    with pytest.raises(ValueError, match="block 2"):
        from_hf_decoder_state(hf_state, MAEDecoderConfig(dim=32, depth=3, heads=4, ffn_dim=64))


def test_config_defaults_and_validation():
    cfg = MAEDecoderConfig()
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.ffn_dim) == (512, 8, 16, 2048)
    hf = ViTMAEConfig()
    assert (hf.decoder_hidden_size, hf.decoder_num_hidden_layers, hf.decoder_num_attention_heads,
            hf.decoder_intermediate_size) == (512, 8, 16, 2048)
    cfg.validate()
    with pytest.raises(ValueError, match=r"dec\.dim \(30\) must be divisible by dec\.heads"):
        MAEDecoderConfig(dim=30, heads=4).validate("dec")
    with pytest.raises(ValueError, match=r"decoder\.depth"):
        MAEDecoderConfig(depth=0).validate()
    with pytest.raises(ValueError, match=r"decoder\.dim \(18\) must be a multiple of 4"):
        MAEDecoder(MAEDecoderConfig(dim=18, heads=2, ffn_dim=8), 8, (2, 2), 4)
