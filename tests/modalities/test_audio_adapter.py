import numpy as np
import pytest
import torch

from multissl.core.blocks import EncoderConfig
from multissl.core.encoder import Encoder
from multissl.export.hf import export
from multissl.methods.data2vec import Data2Vec, Data2VecConfig
from multissl.modalities.audio.data import read_audio
from multissl.modalities.audio.model import Audio, AudioConfig
from multissl.probe import accuracy, probe
from multissl.recipe import load_recipe
from multissl.train import build_model, pretrain
from tests.conftest import TINY_AUDIO

SMALL = AudioConfig(conv_dim=(32,) * 7, pos_conv_groups=4, pos_conv_depth=2, mask_embedding=True)
ENC = EncoderConfig(dim=32, depth=2, heads=4, ffn_dim=64)


def _speech_batch(speech_dir, modality):
    fe = modality.feature_extractor()
    wavs = [read_audio(f) for f in sorted(speech_dir.glob("*.wav"))[:3]]
    wavs[0] = wavs[0][:9000]  # padding in the batch
    b = fe(wavs, sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="pt")
    return {"input_values": b["input_values"], "attention_mask": b["attention_mask"]}


def _max_diff(ours, pad, hf_states):
    return max(float((a - b)[~pad].abs().max()) for a, b in zip(ours, hf_states, strict=True))


@torch.no_grad()
def test_encoder_equals_data2vec_audio_model_on_real_speech(speech_dir):
    from transformers import AutoModel

    m = Audio(SMALL)
    torch.manual_seed(0)
    enc = Encoder(m, ENC).eval()
    hf = AutoModel.from_config(m.hf_config(ENC)).eval()
    missing, unexpected = hf.load_state_dict(m.to_hf_state_dict(enc.state_dict(), ENC), strict=False)
    assert not missing and not unexpected
    inputs = _speech_batch(speech_dir, m)
    states, pad = enc(inputs)
    assert pad[0].any() and not pad[1:].all()
    assert _max_diff(states, pad, hf(**inputs, output_hidden_states=True).hidden_states) <= 1e-4
    one = {"input_values": inputs["input_values"][1:2, : int(inputs["attention_mask"][1].sum())]}  # no padding
    s1, p1 = enc(one)
    assert _max_diff(s1, p1, hf(**one, output_hidden_states=True).hidden_states) <= 1e-4


@torch.no_grad()
def test_import_from_a_data2vec_audio_folder(tmp_path, speech_dir):
    from transformers import Data2VecAudioForCTC

    m = Audio(AudioConfig(conv_dim=(32,) * 7, pos_conv_groups=4, pos_conv_depth=2))
    torch.manual_seed(1)
    hf = Data2VecAudioForCTC(m.hf_config(ENC)).eval()
    hf.save_pretrained(tmp_path / "ctc")
    fresh = Audio(AudioConfig())
    enc_cfg, state = fresh.from_hf(str(tmp_path / "ctc"))
    assert (enc_cfg.dim, enc_cfg.depth, fresh.cfg.conv_dim, fresh.cfg.pos_conv_depth) == (32, 2, (32,) * 7, 2)
    fresh.cfg.mask_embedding = True
    enc = Encoder(fresh, enc_cfg).eval()
    enc.load_state_dict(state)
    inputs = _speech_batch(speech_dir, fresh)
    states, pad = enc(inputs)
    assert _max_diff(states, pad, hf.data2vec_audio(**inputs, output_hidden_states=True).hidden_states) <= 1e-4
    with pytest.raises(ValueError, match="not data2vec-audio"):
        from transformers import BertConfig

        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "bert")
        fresh.from_hf(str(tmp_path / "bert"))


@pytest.mark.parametrize("version", [1, 2])
def test_teacher_holds_what_the_reference_says(version):
    m = Audio(AudioConfig(conv_dim=(32,) * 7, pos_conv_groups=4, pos_conv_depth=2, mask_embedding=version == 1))
    model = Data2Vec(m, ENC, Data2VecConfig(version=version, top_k=2))
    assert "local" not in model.teacher and {"context", "blocks"} <= set(model.teacher)  # conv encoder shared
    with torch.no_grad():
        for p in model.encoder.context.parameters():
            p.add_(1.0)
    model.ema_step()
    t, s = model.teacher["context"], model.encoder.context
    pos_equal = torch.equal(t.pos_conv[0].conv.weight, s.pos_conv[0].conv.weight)
    assert pos_equal == (version == 1)  # v1 copies the positional convs; v2 averages them
    assert not torch.equal(t.layer_norm.weight, s.layer_norm.weight)  # averaged in both


def test_sparse_positions_see_the_full_length_with_masked_frames_zeroed():
    ctx = Audio(SMALL).build_context(ENC).eval()
    x = torch.randn(1, 40, 32)
    pad = torch.zeros(1, 40, dtype=torch.bool)
    mask = torch.zeros(1, 40, dtype=torch.bool)
    mask[0, 10:20] = True
    with torch.no_grad():
        sparse = ctx(x, pad, mask)
        zeroed = ctx(x.masked_fill(mask[..., None], 0), pad)
    keep = ~mask[0]
    torch.testing.assert_close(sparse[0, keep], zeroed[0, keep])


@pytest.mark.parametrize("recipe,extra", [("recipes/audio/tiny.yaml", []),
                                          ("recipes/audio/data2vec-base.yaml", ["--clones", "1"])])
def test_pretrain_export_and_ctc_fine_tuning(tmp_path, speech_dir, recipe, extra):
    from transformers import AutoModel, Data2VecAudioForCTC

    r = load_recipe(recipe, [*TINY_AUDIO, *extra, "--min_samples", "0", "--data", str(speech_dir),
                             "--output_dir", str(tmp_path / "run"), "--max_steps", "3"])
    out = export(pretrain(r), tmp_path / "out")
    assert (out / "preprocessor_config.json").is_file() and "Data2VecAudioModel" in (out / "README.md").read_text()
    model = AutoModel.from_pretrained(out)
    assert type(model).__name__ == "Data2VecAudioModel"

    ctc = Data2VecAudioForCTC.from_pretrained(out, vocab_size=8, ctc_loss_reduction="mean", pad_token_id=0)
    torch.testing.assert_close(ctc.data2vec_audio.encoder.layers[0].attention.q_proj.weight,
                               model.encoder.layers[0].attention.q_proj.weight)
    batch = _speech_batch(speech_dir, Audio(AudioConfig()))
    labels = torch.tensor([[1, 2, 3, -100], [4, 5, 6, 7], [2, 2, 5, -100]])
    ctc.train()
    opt = torch.optim.AdamW(ctc.parameters(), lr=1e-3)
    before = ctc.lm_head.weight.detach().clone()
    loss = ctc(**batch, labels=labels).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, ctc.lm_head.weight)
    assert ctc.data2vec_audio.encoder.layers[0].attention.q_proj.weight.grad.abs().sum() > 0


def test_recipes_validate_with_reference_values():
    v1 = load_recipe("recipes/audio/data2vec-base.yaml")
    assert (v1.method.version, v1.method.top_k, v1.mask.kind, v1.mask.prob, v1.mask.length) == (1, 8, "span", 0.65, 10)
    assert (v1.method.ema.decay, v1.method.ema.end_decay, v1.method.ema.anneal_steps) == (0.999, 0.9999, 30000)
    assert v1.train.lr == 5e-4
    v2 = load_recipe("recipes/audio/data2vec2-base.yaml")
    assert (v2.method.clones, v2.mask.kind, v2.mask.prob, v2.mask.length, v2.mask.adjust) == (8, "block", 0.5, 5, 0.05)
    assert (v2.method.decoder.dim, v2.method.decoder.kernel, v2.method.decoder.groups) == (384, 7, 16)
    assert v2.train.lr == 7.5e-4 and v2.method.ema.end_decay == 0.99999
    for r in (v1, v2):
        assert r.adapter["conv_stride"] == [5, 2, 2, 2, 2, 2, 2] and r.adapter["pos_conv_kernel"] == 19


def test_init_from_hf_then_pretrain(tmp_path, speech_dir):
    from transformers import Data2VecAudioModel

    hf = Data2VecAudioModel(Audio(SMALL).hf_config(ENC))
    hf.save_pretrained(tmp_path / "hf")
    r = load_recipe("recipes/audio/tiny.yaml", [*TINY_AUDIO, "--data", str(speech_dir), "--init_from",
                                                str(tmp_path / "hf"), "--output_dir", str(tmp_path / "run")])
    _, model, *_ = build_model(r)
    torch.testing.assert_close(model.encoder.blocks[0].norm1.weight, hf.encoder.layers[0].layer_norm.weight)
    torch.testing.assert_close(model.teacher["blocks"][0].norm1.weight, hf.encoder.layers[0].layer_norm.weight)


def test_audio_probe_pretrained_random_and_layer_weighted(tmp_path, speech_dir, digits_labels):
    r = load_recipe("recipes/audio/tiny.yaml", [*TINY_AUDIO, "--data", str(speech_dir), "--output_dir",
                                                str(tmp_path / "run"), "--max_steps", "2"])
    out = export(pretrain(r), tmp_path / "out")
    results = probe(out, digits_labels, label_column="label", input_column="path", folds=3)
    names = [(x["model"], x["features"]) for x in results]
    assert {("pretrained", "last layer"), ("random init", "last layer")} <= set(names)
    assert names[-1] == ("majority class", "-")
    majority = accuracy(results, "majority class")
    assert majority == pytest.approx(0.1, abs=0.05)  # 10 balanced digit words
    # Even a barely trained encoder's features separate spoken digits far above chance.
    assert accuracy(results, "pretrained") > 3 * majority
    assert accuracy(results, "pretrained", "layer-weighted") > 3 * majority
    assert np.isfinite([x["accuracy"] for x in results]).all()
