"""The reference initialisation, the CLS loss at the reference weight, RankMe, the position share of
the targets, and short rows and padding in the sparse student and its decoder."""

import math

import pytest
import torch
import torch.nn.functional as F

from multissl.core.blocks import EncoderConfig
from multissl.core.decoder import Decoder1d, DecoderConfig
from multissl.core.health import HealthConfig, check_health, effective_rank, position_share
from multissl.methods.data2vec import Data2Vec, Data2VecConfig
from multissl.modalities.audio.model import Audio, AudioConfig
from multissl.modalities.text.model import Text, TextConfig
from multissl.modalities.vision.model import Vision, VisionConfig, sincos_2d

ENC = EncoderConfig(dim=64, depth=2, heads=4, ffn_dim=256)
TEXT = TextConfig(max_length=32, vocab_size=500, pad_token_id=1, bos_token_id=0, eos_token_id=2, mask_token_id=3)


def close(value: float, expected: float, rel: float = 0.1) -> bool:
    return abs(value - expected) <= rel * expected


def check_bert_rules(model: Data2Vec) -> None:
    """Every Linear and Embedding of the blocks and embeddings: N(0, 0.02), zero bias; LayerNorms 1/0."""
    for name, m in model.encoder.named_modules():
        if isinstance(m, torch.nn.Linear) and not name.startswith("local.projection"):
            w = m.weight.detach()
            assert close(float(w.std()), 0.02) and abs(float(w.mean())) < 0.002, name
            assert m.bias is None or float(m.bias.detach().abs().max()) == 0.0, name
        if isinstance(m, torch.nn.Embedding):
            w = m.weight.detach()
            rows = torch.ones(len(w), dtype=torch.bool)
            rows[m.padding_idx] = False
            assert close(float(w[rows].std()), 0.02), name
            assert float(w[m.padding_idx].abs().max()) == 0.0, name
        if isinstance(m, torch.nn.LayerNorm) and m.elementwise_affine:
            assert torch.equal(m.weight.detach(), torch.ones_like(m.weight)), name
            assert torch.equal(m.bias.detach(), torch.zeros_like(m.bias)), name


def test_text_encoder_follows_the_bert_rule_and_the_teacher_starts_equal():
    torch.manual_seed(0)
    model = Data2Vec(Text(TEXT), ENC, Data2VecConfig(version=1, top_k=2, head_layers=2))
    check_bert_rules(model)
    for layer in model.head:  # the v1 head too (the reference initialises the whole model)
        if isinstance(layer, torch.nn.Linear):
            assert close(float(layer.weight.detach().std()), 0.02)
    for a, b in zip(model.teacher["blocks"].parameters(), model.encoder.blocks.parameters(), strict=True):
        assert torch.equal(a, b)


def test_speech_encoder_keeps_the_reference_conv_and_projection_rules():
    torch.manual_seed(0)
    cfg = AudioConfig(conv_dim=(64,) * 7, pos_conv_depth=2, pos_conv_groups=4)
    dec = DecoderConfig(dim=32, groups=4, projection_layers=1)
    model = Data2Vec(Audio(cfg), ENC, Data2VecConfig(version=2, top_k=2, decoder=dec))
    check_bert_rules(model)
    local = model.encoder.local
    for layer in local.conv_layers:  # Kaiming normal: std sqrt(2 / fan_in)
        fan_in = layer.conv.in_channels * layer.conv.kernel_size[0]
        assert close(float(layer.conv.weight.detach().std()), math.sqrt(2 / fan_in), 0.15)
    # the feature projection keeps PyTorch's uniform(+-1/sqrt(fan_in)): std 1/sqrt(3 fan_in), non-zero bias
    proj = local.projection
    assert close(float(proj.weight.detach().std()), 1 / math.sqrt(3 * proj.in_features))
    assert float(proj.bias.detach().abs().max()) > 0
    # the decoder keeps PyTorch's initialisation (the reference re-initialises its projection so)
    head = model.head.proj
    assert close(float(head.weight.detach().std()), 1 / math.sqrt(3 * head.in_features))


def test_image_encoder_rules_and_fixed_sincos_positions():
    torch.manual_seed(0)
    model = Data2Vec(Vision(VisionConfig(image_size=32, patch_size=4)), EncoderConfig(64, 2, 4, 256, norm="pre"),
                     Data2VecConfig(version=2, top_k=2, decoder=DecoderConfig(dim=32, groups=4)))
    check_bert_rules(model)
    w = model.encoder.local.projection.weight.detach()  # Xavier uniform over the flattened patch
    fan_in, fan_out = w[0].numel(), w.shape[0]
    assert close(float(w.std()), math.sqrt(2 / (fan_in + fan_out)))
    ctx = model.encoder.context
    assert close(float(ctx.cls_token.detach().std()), 1.0, 0.3)  # data2vec 2.0: N(0, 1)
    assert not ctx.position_embeddings.requires_grad
    assert torch.equal(ctx.position_embeddings[0, 0], torch.zeros(64))
    assert torch.allclose(ctx.position_embeddings[0, 1:], sincos_2d(8, 8, 64))
    table = sincos_2d(8, 8, 64)
    assert torch.allclose(table[9, :16], torch.sin(torch.tensor(1.0) / 10000 ** (torch.arange(16) / 16)))


def test_cls_loss_is_the_reference_sum_over_samples():
    """fairseq: loss = (sum over masked tokens of the patch loss + cls_loss * sample_size * sum over the
    (B * M) samples of the CLS loss) / sample_size, sample_size = the number of masked tokens."""
    torch.manual_seed(0)
    vision = Vision(VisionConfig(image_size=16, patch_size=4))
    cfg = Data2VecConfig(version=2, clones=2, top_k=2, cls_loss=0.5, decoder=DecoderConfig(layers=1, dim=32, groups=4))
    model = Data2Vec(vision, EncoderConfig(32, 2, 4, 64, norm="pre", dropout=0.0, attention_dropout=0.0), cfg).eval()
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = torch.rand(6, 16, generator=torch.Generator().manual_seed(2)) < 0.5
    with_cls = model({"pixel_values": pixels}, mask)["loss"]
    model.cfg.cls_loss = 0.0
    torch.manual_seed(3)
    patch_only = model({"pixel_values": pixels}, mask)["loss"]

    # by hand: the student's final CLS (pre-LN: after the final norm) against the mean of the targets
    enc = model.encoder
    y = model.targets({"pixel_values": pixels}).repeat_interleave(2, 0)
    feats, pad = enc.local({"pixel_values": pixels})
    feats, pad = feats.repeat_interleave(2, 0), pad.repeat_interleave(2, 0)
    from multissl.core.encoder import gather_kept

    x = enc.context(feats, pad, mask)
    x, xpad, _ = gather_kept(x, torch.cat([pad.new_zeros(6, 1), pad], 1), mask, 1)
    cls = enc.norm(enc.blocks(x, xpad)[0])[:, 0]
    per_sample = ((cls - y.mean(1)) ** 2).sum(-1) / math.sqrt(32)
    expected = patch_only + 0.5 * per_sample.sum()
    assert torch.allclose(with_cls, expected, rtol=1e-5)


def test_effective_rank_of_known_rank_matrices():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(50, 50, generator=g))
    for k in (1, 3, 10):
        x = q[:, :k] @ torch.linalg.qr(torch.randn(20, 20, generator=g))[0][:k]  # k equal singular values
        assert effective_rank(x) == pytest.approx(k, rel=1e-3)
    skewed = q[:, :2] @ torch.diag(torch.tensor([1.0, 1e-4])) @ torch.eye(2, 20)
    assert 1.0 <= float(effective_rank(skewed)) < 1.01  # one direction dominates: rank about 1
    msg = check_health(10, {"student_rank": 1.2, "target_var": 1, "pred_var": 1}, HealthConfig(check_after=0,
                                                                                                min_rank=2))
    assert msg is not None and "student_rank 1.20 < min_rank 2" in msg


def test_position_share_is_what_the_position_explains():
    g = torch.Generator().manual_seed(0)
    per_position = torch.randn(1, 16, 8, generator=g)
    noise = torch.randn(256, 16, 8, generator=g)
    # variance 1 from the position, 1 from noise: half
    assert float(position_share(per_position * 1.0 + noise)) == pytest.approx(0.5, abs=0.05)
    assert abs(float(position_share(noise))) < 0.02
    pad = torch.zeros(256, 16, dtype=torch.bool)
    pad[:, 12:] = True
    y = per_position + 0.1 * noise
    y[pad] = 1000.0  # padding must not count
    assert float(position_share(y, pad)) == pytest.approx(1 / 1.01, abs=0.01)


def test_v2_rows_with_nothing_kept_or_nothing_masked_train():
    torch.manual_seed(0)
    model = Data2Vec(Text(TEXT), ENC, Data2VecConfig(version=2, clones=1, top_k=2,
                                                     decoder=DecoderConfig(layers=2, dim=32, kernel=3))).train()
    ids = torch.randint(4, 500, (4, 12), generator=torch.Generator().manual_seed(1))
    ids[2, 2:] = 1  # a short row: two tokens, then padding
    mask = torch.zeros(4, 12, dtype=torch.bool)
    mask[0] = True  # nothing kept
    mask[2, :2] = True  # the short row: everything masked
    mask[3, ::2] = True  # row 1: nothing masked
    out = model({"input_ids": ids}, mask)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # a batch where nothing at all is masked: loss 0, no NaN
    out = model({"input_ids": ids}, torch.zeros(4, 12, dtype=torch.bool))
    assert float(out["loss"]) == 0.0 and all(torch.isfinite(v) for v in out.values())
    # and where nothing at all is kept
    out = model({"input_ids": ids}, torch.ones(4, 12, dtype=torch.bool))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


def test_padding_does_not_reach_real_positions_through_the_conv_decoder():
    torch.manual_seed(0)
    dec = Decoder1d(DecoderConfig(layers=3, dim=16, kernel=5, input_dropout=0.0), 16).eval()
    short = torch.randn(1, 6, 16)
    padded = torch.cat([short, 5 * torch.randn(1, 10, 16)], 1)  # junk where the padding is
    pad = torch.zeros(1, 16, dtype=torch.bool)
    pad[:, 6:] = True
    alone = dec.features(short, torch.zeros(1, 6, dtype=torch.bool))
    together = dec.features(padded, pad)[:, :6]
    assert torch.allclose(alone, together, atol=1e-5)


def test_sincos_needs_a_multiple_of_four():
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d(2, 2, 6)
    assert F.cosine_similarity(sincos_2d(4, 4, 32)[0], sincos_2d(4, 4, 32)[1], 0) > 0.5  # neighbours are alike


def test_a_capped_ema_schedule_leaves_its_init_at_any_run_length():
    """With ``max_init_share`` a 100-step and a 100k-step run both end with at most that share of
    the teacher at its initial value; a schedule already fast enough for its run is unchanged."""
    from multissl.core.ema import EMAConfig, annealed_decay

    paper = dict(decay=0.999, end_decay=0.9999, anneal_fraction=1.0)
    for steps in (100, 100_000):
        share = math.prod(annealed_decay(s, EMAConfig(**paper, max_init_share=0.05), steps) for s in range(steps))
        uncapped = math.prod(annealed_decay(s, EMAConfig(**paper), steps) for s in range(steps))
        assert share == pytest.approx(0.05, rel=1e-6) if uncapped > 0.05 else share == uncapped
    assert math.prod(annealed_decay(s, EMAConfig(**paper), 100) for s in range(100)) > 0.9  # what the cap fixes
    fast = EMAConfig(0.99, 0.999, anneal_fraction=1.0)
    capped = EMAConfig(0.99, 0.999, anneal_fraction=1.0, max_init_share=0.05)
    assert [annealed_decay(s, capped, 600) for s in range(600)] == [annealed_decay(s, fast, 600) for s in range(600)]
