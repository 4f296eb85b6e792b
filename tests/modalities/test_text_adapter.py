"""The text encoder against transformers' own classes, on real text."""

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, RobertaConfig, RobertaModel

from multissl.core.blocks import EncoderConfig
from multissl.core.encoder import Encoder
from multissl.modalities import get_modality
from multissl.modalities.text.model import TextConfig


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def verses(kjv_rows):
    return [kjv_rows[i]["text"] for i in (0, 1000, 23145, 31101)]


def encoder_from(folder):
    text = get_modality("text")(TextConfig())
    enc_cfg, state = text.from_hf(str(folder))
    enc = Encoder(text, enc_cfg)
    enc.load_state_dict(state)
    return enc.eval()


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_import_reproduces_hf_hidden_states(tmp_path, tok, verses, kind):
    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, pad_token_id=tok.pad_token_id)
    if kind == "bert":
        hf = BertModel(BertConfig(max_position_embeddings=64, **common))
    else:
        hf = RobertaModel(RobertaConfig(max_position_embeddings=64 + tok.pad_token_id + 1, type_vocab_size=1,
                                        layer_norm_eps=1e-5, **common))
    with torch.no_grad():  # a non-zero token-type row must be folded in exactly
        hf.embeddings.token_type_embeddings.weight.normal_()
    hf.save_pretrained(tmp_path / kind)
    enc = encoder_from(tmp_path / kind)
    batch = tok(verses, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = hf.eval()(**batch, output_hidden_states=True).hidden_states
        ours, pad = enc({"input_ids": batch["input_ids"]})
    valid = batch["attention_mask"].bool()
    assert len(ours) == len(ref) == 3
    for a, b in zip(ours, ref, strict=True):
        assert (a - b)[valid].abs().max() <= 1e-5


def test_import_rejects_other_models(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=16, patch_size=8)).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="not a BERT-family text encoder"):
        get_modality("text")(TextConfig()).from_hf(str(tmp_path / "vit"))


def test_roberta_position_numbering():
    text = get_modality("text")(TextConfig(max_length=8, vocab_size=20, pad_token_id=1))
    ctx = text.build_context(EncoderConfig(dim=4, depth=1, heads=1, ffn_dim=4))
    seen = []
    ctx.embed_positions.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    pad = torch.tensor([[False, False, False, True]])
    ctx(torch.zeros(1, 4, 4), pad)
    assert seen[0].tolist() == [[2, 3, 4, 1]]  # like RoBERTa: pad + 1 + index, padding keeps pad
