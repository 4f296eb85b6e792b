"""BERT masked language modelling: the loss equals transformers' RobertaForMaskedLM loss on the same
weights and masked batch; a tiny run exports a masked-LM folder that fill-mask and AutoModel load."""

from __future__ import annotations

import json

import pytest
import torch

from multissl.core.blocks import EncoderConfig
from multissl.data.masking import MaskConfig
from multissl.methods.mlm import MaskedLM, MLMConfig
from multissl.modalities.text import Text, TextConfig
from multissl.modalities.text.data import TextCollator
from multissl.modalities.text.model import load_tokenizer
from multissl.recipe import RecipeError, load_recipe
from tests.conftest import ROOT, TINY, for_method

TINY_MLM = for_method(TINY, ROOT / "recipes" / "text" / "mlm-tiny.yaml")
ENC = EncoderConfig(dim=32, depth=2, heads=4, ffn_dim=64, dropout=0.0, attention_dropout=0.0)


def _model_and_batch(tokenizer_dir, kjv_rows, arch):
    tok = load_tokenizer(str(tokenizer_dir))
    cfg = TextConfig(max_length=32, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                     eos_token_id=tok.sep_token_id, mask_token_id=tok.mask_token_id)
    text = Text(cfg)
    torch.manual_seed(0)
    model = MaskedLM(text, ENC, MLMConfig()).eval()
    ids = [[cfg.bos_token_id, *tok(r["text"], add_special_tokens=False)["input_ids"][:30]] for r in kjv_rows[:8]]
    collate = TextCollator(MaskConfig(kind="bert", prob=0.3), cfg, MaskedLM.student_view(MLMConfig()))
    batch = collate([{"input_ids": x, "seed": (0, 0, i)} for i, x in enumerate(ids)])
    return text, model, batch


@pytest.mark.parametrize("arch", ["roberta", "data2vec-text"])
def test_loss_equals_transformers_masked_lm(tokenizer_dir, kjv_rows, arch):
    from transformers import AutoModelForMaskedLM

    text, model, batch = _model_and_batch(tokenizer_dir, kjv_rows, arch)
    hf = AutoModelForMaskedLM.from_config(text.hf_config(ENC, arch)).eval()
    auto, head = model.hf_task()
    encoder = text.to_hf_state_dict(model.encoder.state_dict(), ENC)
    state = {f"{hf.base_model_prefix}.{k}": v for k, v in encoder.items()}
    missing, unexpected = hf.load_state_dict(state | head, strict=False)
    assert auto == "AutoModelForMaskedLM" and not unexpected and not [k for k in missing if "pooler" not in k]

    ids, student, mask = batch["inputs"]["input_ids"], batch["student_inputs"]["input_ids"], batch["mask"]
    assert mask.sum() > 10 and (student[mask] != ids[mask]).float().mean() < 0.95  # some selected tokens stay
    labels = torch.where(mask, ids, torch.full_like(ids, -100))
    with torch.no_grad():
        theirs = hf(input_ids=student, attention_mask=(student != text.cfg.pad_token_id).long(), labels=labels).loss
        ours = model(**batch)["loss"]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_collator_marks_every_selected_token(tokenizer_dir, kjv_rows):
    _, _, batch = _model_and_batch(tokenizer_dir, kjv_rows, "roberta")
    ids, student, mask = batch["inputs"]["input_ids"], batch["student_inputs"]["input_ids"], batch["mask"]
    changed = student != ids
    assert not (changed & ~mask).any()  # only selected tokens change
    kept = (mask & ~changed).float().sum() / mask.sum()  # the 10% kept (and random draws of the same token)
    assert 0.03 < float(kept) < 0.3


def test_mlm_needs_bert_masking():
    with pytest.raises(RecipeError, match="mask.kind 'bert'"):
        load_recipe(ROOT / "recipes" / "text" / "mlm-tiny.yaml", ["--mask.kind", "random"])


def test_tiny_run_exports_a_fill_mask_model(tmp_path, kjv_file, tokenizer_dir):
    from transformers import AutoModel, pipeline

    from multissl.export.hf import export
    from multissl.train import pretrain

    overrides = [*TINY_MLM, "--data", str(kjv_file), "--tokenizer", str(tokenizer_dir), "--output_dir",
                 str(tmp_path / "run"), "--max_steps", "4"]
    run = pretrain(load_recipe(ROOT / "recipes" / "text" / "mlm-tiny.yaml", overrides))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(0 <= r["mlm_accuracy"] <= 1 for r in rows) and rows[-1]["loss"] > 0
    out = export(run, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Data2VecTextForMaskedLM"]
    fill = pipeline("fill-mask", model=str(out), tokenizer=str(out))
    tok = fill.tokenizer
    guesses = fill(f"In the beginning God created the {tok.mask_token} and the earth.")
    assert len(guesses) == 5 and all(g["token_str"] for g in guesses)
    assert sum(g["score"] for g in guesses) <= 1.0 + 1e-6
    encoder = AutoModel.from_pretrained(out)
    assert type(encoder).__name__ == "Data2VecTextModel"
    assert "pipeline_tag: fill-mask" in (out / "README.md").read_text()


def test_fill_mask_benchmark_hides_one_word_per_verse(kjv_file, kjv_rows, tokenizer_dir):
    """tools/fill_mask.py's cloze items: one mask per held-back verse, in place of a one-token word,
    trimmed to the model's length; the unigram guess is KJV's most frequent words."""
    from tools.fill_mask import cloze_items

    tok = load_tokenizer(str(tokenizer_dir))
    verses = [r["text"] for r in kjv_rows[1::50][:60]]
    items, unigram = cloze_items(tok, verses, kjv_file, max_tokens=24)
    assert len(items) > 50 and unigram[:2] == ["the", "and"] and len(unigram) == 5
    assert any(len(tok(v)["input_ids"]) > 24 for v in verses)  # some verses had to be trimmed
    for (text, word), verse in zip(items, verses, strict=True):  # an item per verse
        assert text.count(tok.mask_token) == 1 and len(tok(text)["input_ids"]) <= 24
        assert text.replace(tok.mask_token, word) in verse
        assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1
