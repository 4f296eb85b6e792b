"""The ViT encoder takes views of other sizes than ``image_size`` (multi-crop's local crops): its
position table is resized to the view's grid as ``ViTModel(..., interpolate_pos_encoding=True)`` does,
so the exported model computes the same at any size."""

import pytest
import torch
from PIL import Image

from multissl.core.blocks import EncoderConfig
from multissl.core.encoder import Encoder
from multissl.modalities.vision.data import eval_transform
from multissl.modalities.vision.model import Vision, VisionConfig

ENC = EncoderConfig(dim=32, depth=2, heads=4, ffn_dim=64, norm="pre", eps=1e-6)


@pytest.mark.parametrize("positions", ["learned", "sincos"])
@torch.no_grad()
def test_encoder_at_a_local_crop_size_equals_vit_model_with_interpolated_positions(positions, image_dirs):
    from transformers import AutoModel

    m = Vision(VisionConfig(image_size=32, patch_size=4, positions=positions))
    torch.manual_seed(0)
    enc = Encoder(m, ENC).eval()
    hf = AutoModel.from_config(m.hf_config(ENC)).eval()
    hf.load_state_dict(m.to_hf_state_dict(enc.state_dict(), ENC), strict=False)
    photos = [Image.open(p).convert("RGB") for p in image_dirs[2][:3]]
    for side in (12, 20, 48):  # local crops, and a larger view
        x = torch.stack([eval_transform(p, VisionConfig(image_size=side, patch_size=4)) for p in photos])
        states, pad = enc({"pixel_values": x})
        assert states[0].shape == (3, 1 + (side // 4) ** 2, 32) and not pad.any()
        out = hf(pixel_values=x, interpolate_pos_encoding=True, output_hidden_states=True)
        diffs = [float((a - b).abs().max()) for a, b in zip(states, out.hidden_states, strict=True)]
        diffs.append(float((enc.norm(states[-1]) - out.last_hidden_state).abs().max()))
        assert max(diffs) <= 1e-4, (side, diffs)
        # the positions do depend on the grid: the table is not reused as it is
        table = enc.context.positions((side // 4) ** 2)
        assert table.shape == (1, 1 + (side // 4) ** 2, 32)
        assert torch.equal(table[:, 0], enc.context.position_embeddings[:, 0])  # the CLS position is kept


def test_a_grid_that_is_not_square_is_a_one_line_error():
    m = Vision(VisionConfig(image_size=16, patch_size=4))
    enc = Encoder(m, ENC)
    with pytest.raises(ValueError, match="do not make a square grid"):
        enc({"pixel_values": torch.zeros(1, 3, 16, 12)})
