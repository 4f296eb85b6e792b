import torch

from multissl.core.blocks import Blocks, EncoderConfig
from multissl.core.decoder import Decoder1d, DecoderConfig, projection


def test_padding_does_not_leak_into_valid_positions():
    torch.manual_seed(0)
    for norm in ("post", "pre"):
        blocks = Blocks(EncoderConfig(dim=16, depth=2, heads=2, ffn_dim=32, norm=norm, layer_scale=0.1)).eval()
        x = torch.randn(1, 8, 16)
        pad = torch.zeros(1, 8, dtype=torch.bool)
        pad[0, 5:] = True
        y1, ffn, out = blocks(x, pad)
        x2 = x.clone()
        x2[0, 5:] = 100.0
        y2, _, _ = blocks(x2, pad)
        short, _, _ = blocks(x[:, :5])
        assert torch.allclose(y1[0, :5], y2[0, :5], atol=1e-5)
        assert torch.allclose(y1[0, :5], short[0], atol=1e-5)
        assert len(ffn) == len(out) == 2 and ffn[0].shape == x.shape


def test_post_ln_block_returns_ffn_output_before_residual():
    torch.manual_seed(0)
    blocks = Blocks(EncoderConfig(dim=8, depth=1, heads=2, ffn_dim=16)).eval()
    b = blocks[0]
    x = torch.randn(2, 3, 8)
    y, (h,), _ = blocks(x)
    a = b.norm1(x + b.attn(x))
    assert torch.allclose(h, b.fc2(torch.nn.functional.gelu(b.fc1(a))), atol=1e-6)
    assert torch.allclose(y, b.norm2(a + h), atol=1e-6)


def test_decoder_and_heads():
    d = Decoder1d(DecoderConfig(layers=3, dim=8, kernel=5, groups=2, residual=True, projection_layers=1), 12)
    assert d(torch.randn(2, 7, 12)).shape == (2, 7, 12)
    assert projection(8, 8, 2)(torch.randn(3, 8)).shape == (3, 8)
