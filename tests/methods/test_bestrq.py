"""BEST-RQ: the loss equals a by-hand computation (numpy codes, transformers' Data2VecAudioModel with
its masked_spec_embed as the student, log-softmax at masked frames); the quantiser is seeded by the
method and saved; a tiny real run on speech exports a Data2VecAudioModel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from multissl.core.blocks import EncoderConfig
from multissl.data.masking import MaskConfig
from multissl.methods.bestrq import BestRQ, BestRQConfig
from multissl.modalities.audio import Audio, AudioConfig
from multissl.modalities.audio.data import AudioCollator, normalize, read_audio
from multissl.recipe import load_recipe
from tests.conftest import ROOT, TINY_AUDIO

# the tiny audio overrides without data2vec's own keys
TINY_BESTRQ = [x for k, v in zip(TINY_AUDIO[::2], TINY_AUDIO[1::2], strict=True)
               if not k.startswith(("--top_k", "--decoder.", "--ema.", "--clones")) for x in (k, v)]
ENC = EncoderConfig(dim=32, depth=2, heads=4, ffn_dim=64, norm="post", eps=1e-5, dropout=0.0, attention_dropout=0.0)
CFG = BestRQConfig(code_dim=8, codebook_size=64, codebooks=2, quantizer_seed=3)


def _audio(mask_embedding: bool = True) -> Audio:
    return Audio(AudioConfig(conv_dim=[32] * 7, pos_conv_depth=2, pos_conv_groups=4, mask_embedding=mask_embedding))


def _batch(audio: Audio, speech_dir) -> dict:
    wavs = [normalize(read_audio(f)) for f in sorted(speech_dir.glob("*.wav"))[:3]]
    wavs = [wavs[0][:24000], wavs[1][:11000], wavs[2][:24000]]  # the second one padded
    collate = AudioCollator(MaskConfig(kind="span", prob=0.65, length=10), audio.cfg)
    return collate([{"input_values": w, "seed": (0, 0, i)} for i, w in enumerate(wavs)])


def test_loss_equals_by_hand_on_transformers_encoder(speech_dir):
    from transformers import Data2VecAudioModel

    audio = _audio()
    torch.manual_seed(0)
    model = BestRQ(audio, ENC, CFG).eval()
    batch = _batch(audio, speech_dir)
    inputs, mask = batch["inputs"], batch["mask"]
    with torch.no_grad():
        ours = model(**batch)

    # the student: transformers' encoder on the same weights, masked frames replaced by masked_spec_embed
    hf_cfg = audio.hf_config(ENC)
    hf_cfg.apply_spec_augment = True
    hf = Data2VecAudioModel(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(audio.to_hf_state_dict(model.encoder.state_dict(), ENC), strict=False)
    assert not unexpected and "masked_spec_embed" not in missing
    frames = hf._get_feat_extract_output_lengths(inputs["attention_mask"].sum(-1))
    real = torch.arange(mask.shape[1])[None] < frames[:, None]
    masked = mask & real
    assert 0.3 < masked.sum() / real.sum() < 0.7 and not (mask & ~real).any()
    with torch.no_grad():
        x = hf(**inputs, mask_time_indices=masked).last_hidden_state  # (B, T, D)

    # the targets: the adapter's token signal, coded by brute force in numpy
    signal = audio.token_signal(inputs, mask.shape[1]).double().numpy()
    proj, book = model.quantizer.projection.double().numpy(), model.quantizer.codebook.double().numpy()
    codes = []
    for c in range(CFG.codebooks):
        z = signal @ proj[c]  # (B, T, code_dim); padding frames are zero, their codes unused
        z /= np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
        codes.append(((z[..., None, :] - book[c]) ** 2).sum(-1).argmin(-1))  # nearest by l2
    codes = np.stack(codes)  # (K, B, T)
    codes = torch.from_numpy(codes).permute(1, 2, 0)[masked]  # (N, K)
    assert codes.unique().numel() > 10

    w, b = model.head.weight.double(), model.head.bias.double()
    logits = (x[masked].double() @ w.T + b).view(-1, CFG.codebooks, CFG.codebook_size)
    by_hand = -torch.log_softmax(logits, -1).gather(-1, codes[..., None]).mean()
    torch.testing.assert_close(ours["loss"].double(), by_hand, rtol=1e-4, atol=1e-4)
    assert abs(float(ours["loss"]) - np.log(CFG.codebook_size)) < 0.5  # near uniform at init
    accuracy = (logits.argmax(-1) == codes).double().mean()
    torch.testing.assert_close(ours["code_accuracy"].double(), accuracy)
    assert set(ours) == {"loss", "code_accuracy", "pred_var", "student_rank"}


def test_quantizer_is_seeded_by_the_method_and_saved():
    torch.manual_seed(0)
    a = BestRQ(_audio(), ENC, CFG)
    torch.manual_seed(1)
    b = BestRQ(_audio(), ENC, CFG)
    c = BestRQ(_audio(), ENC, BestRQConfig(code_dim=8, codebook_size=64, codebooks=2, quantizer_seed=4))
    sa = a.state_dict()
    assert {"quantizer.projection", "quantizer.codebook"} <= set(sa) and not any(k.startswith("modality") for k in sa)
    assert not [n for n, _ in a.named_parameters() if n.startswith("quantizer")]
    assert torch.equal(a.quantizer.codebook, b.quantizer.codebook)
    assert torch.equal(a.quantizer.projection, b.quantizer.projection)
    assert not torch.equal(a.head.weight, b.head.weight)  # the torch seed still draws the model
    assert not torch.equal(a.quantizer.codebook, c.quantizer.codebook)
    assert a.head.weight.shape == (2 * 64, 32) and not a.head.bias.detach().any()


def test_errors_name_the_keys(speech_dir):
    with pytest.raises(ValueError, match="method.codebook_size"):
        BestRQConfig(codebook_size=1).validate()
    audio = _audio()
    batch = _batch(audio, speech_dir)
    with pytest.raises(ValueError, match="method.signal_dim"):
        BestRQ(audio, ENC, BestRQConfig(signal_dim=40, codebook_size=64))(**batch)
    with pytest.raises(ValueError, match="adapter.mask_embedding"):
        BestRQ(_audio(False), ENC, BestRQConfig(codebook_size=64))(**batch)


def test_tiny_run_exports_a_data2vec_audio_model(tmp_path, speech_dir):
    from transformers import AutoModel

    from multissl.export.hf import export
    from multissl.train import pretrain

    overrides = [*TINY_BESTRQ, "--max_steps", "4", "--data", str(speech_dir), "--output_dir", str(tmp_path / "run")]
    recipe = load_recipe(ROOT / "recipes" / "audio" / "bestrq-tiny.yaml", overrides)
    assert recipe.method.codebook_size == 512 and recipe.mask.kind == "span"
    run = pretrain(recipe)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(0 <= r["code_accuracy"] <= 1 for r in rows) and rows[-1]["loss"] > 0
    out = export(run, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Data2VecAudioModel"]
    encoder = AutoModel.from_pretrained(out)
    assert type(encoder).__name__ == "Data2VecAudioModel"
    assert load_recipe(ROOT / "recipes" / "audio" / "bestrq-base.yaml").method.codebook_size == 8192
