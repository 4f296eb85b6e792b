"""SimCSE end to end on real text (King James verses): the two views of a sentence are two dropout masks;
a tiny run exports a folder that sentence-transformers loads with our embeddings and AutoModel loads
as the encoder; training continues from that export; and the probe's sentence-similarity rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from multissl.recipe import load_recipe
from multissl.train import build_model, pretrain
from tests.conftest import ROOT

RECIPE = ROOT / "recipes" / "text" / "simcse-tiny.yaml"
SMALL = ["--encoder.dim", "32", "--encoder.depth", "2", "--encoder.heads", "4", "--encoder.ffn_dim", "64",
         "--adapter.max_length", "32", "--batch_size", "8", "--logging_steps", "2", "--save_steps", "4",
         "--report_to", "none", "--warmup_steps", "0", "--health.check_after", "0"]
SENTENCES = ["In the beginning God created the heaven and the earth.", "Jesus wept.",
             "And God said, Let there be light: and there was light.", "The LORD is my shepherd; I shall not want."]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, kjv_file, tokenizer_dir):
    """A tiny SimCSE run (6 updates, mean pooling) and its export."""
    from multissl.export.hf import export

    root = tmp_path_factory.mktemp("simcse")
    args = [*SMALL, "--data", str(kjv_file), "--tokenizer", str(tokenizer_dir), "--max_steps", "6", "--method.pool",
            "mean", "--output_dir", str(root / "run")]
    run = pretrain(load_recipe(RECIPE, args))
    return run, export(run, root / "export")


def test_the_two_views_are_two_dropout_masks(kjv_file, tokenizer_dir):
    _, model, dataset, collator, _, _ = build_model(load_recipe(RECIPE, [*SMALL, "--data", str(kjv_file),
                                                                         "--tokenizer", str(tokenizer_dir)]))
    batch = collator([dataset[i] for i in range(4)])
    a, b = batch["views"]
    assert torch.equal(a["input_ids"], b["input_ids"])
    model.train()
    assert not torch.allclose(model.embed(a), model.embed(b), atol=1e-4)  # dropout drew two masks
    model.eval()
    assert torch.equal(model.embed(a), model.embed(b))
    model.train()
    out = model(**batch)
    assert torch.isfinite(out["loss"]) and out["loss"].item() > 0 and out["loss"].requires_grad


def test_the_export_loads_in_sentence_transformers_with_our_embeddings(export_dir):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from multissl.runs import load_run_model

    run, out = export_dir
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(np.isfinite(r["loss"]) and r["pred_var"] > 0 for r in rows)
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == 32
    theirs = st.encode(SENTENCES, convert_to_tensor=True)
    _, _, model = load_run_model(run)
    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        ours = model.embed({"input_ids": tok(SENTENCES, padding=True, return_tensors="pt")["input_ids"]})
    assert theirs.shape == ours.shape and torch.allclose(theirs, ours, atol=1e-5)
    long = st.encode(["and " * 200])  # truncated at the model's length, not an index error
    assert long.shape == (1, 32)
    encoder = AutoModel.from_pretrained(out)
    assert type(encoder).__name__ == "Data2VecTextModel"
    card = (out / "README.md").read_text()
    assert "pipeline_tag: sentence-similarity" in card and "sentence-transformers" in card


def test_cls_pooling_exports_cls_pooling(export_dir, tmp_path):
    """The same weights exported with pool cls (the files the method writes) give the first token."""
    import shutil

    from sentence_transformers import SentenceTransformer

    from multissl.runs import load_run_model

    run, out = export_dir
    _, _, model = load_run_model(run)
    model.cfg.pool = "cls"
    folder = tmp_path / "cls"
    shutil.copytree(out, folder)
    for name, text in model.hf_extra_files().items():
        (folder / name).write_text(text)
    st = SentenceTransformer(str(folder), device="cpu")
    ids = st.tokenizer(SENTENCES, padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = model.embed({"input_ids": ids})
        assert torch.allclose(st.encode(SENTENCES, convert_to_tensor=True), ours, atol=1e-5)
        assert torch.equal(ours, model.encoder.encode({"input_ids": ids})[0][:, 0])


def test_training_continues_from_the_export(export_dir, kjv_file, tmp_path):
    """SimCSE's usual use: --init_from a text encoder (here a SimCSE export; data2vec and MLM exports are
    the same HF class) with its own tokenizer."""
    from transformers import AutoModel

    _, out = export_dir
    args = ["--batch_size", "8", "--report_to", "none", "--logging_steps", "1", "--warmup_steps", "0",
            "--data", str(kjv_file), "--tokenizer", str(out), "--init_from", str(out)]
    _, model, _, _, _, recipe = build_model(load_recipe(RECIPE, args))
    assert recipe.encoder.dim == 32 and recipe.encoder.depth == 2  # the imported shape, not the recipe's 128 x 4
    hf = AutoModel.from_pretrained(out).eval()
    ids = hf.config.pad_token_id
    x = torch.tensor([[0, 100, 200, 300, 2, ids]])
    with torch.no_grad():
        hf_out = hf(input_ids=x, attention_mask=(x != ids).long()).last_hidden_state
        ours, _ = model.eval().encoder.encode({"input_ids": x})
    assert torch.allclose(ours[:, :5], hf_out[:, :5], atol=1e-5)
    run = pretrain(load_recipe(RECIPE, [*args, "--max_steps", "1", "--output_dir", str(tmp_path / "more")]))
    after = load_file(str(run / "model.safetensors"))
    before = model.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("encoder."))


def test_sts_probe_gives_spearman_one_for_the_models_own_ranking(export_dir, tmp_path, kjv_rows):
    """A pairs file scored by the export's own cosine similarities: Spearman 1 with standard error 0,
    while random init ranks them otherwise; and a file scored against that ranking gives -1."""
    from sentence_transformers import SentenceTransformer

    from multissl.probe import format_table, spearman_se, sts_rows

    _, out = export_dir
    verses = [r["text"] for r in kjv_rows[500:520]]
    pairs = [(verses[i], verses[j]) for i in range(20) for j in range(i + 1, 20)][:120]
    emb = SentenceTransformer(str(out), device="cpu").encode([t for p in pairs for t in p]).reshape(len(pairs), 2, -1)
    own = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in emb]
    pd.DataFrame({"sentence1": [a for a, _ in pairs], "sentence2": [b for _, b in pairs], "score": own}).to_csv(
        tmp_path / "own.csv", index=False)
    rows = sts_rows(out, tmp_path / "own.csv", bootstrap=50)
    mine = next(r for r in rows if r["model"] == "pretrained")
    base = next(r for r in rows if r["model"] == "random init")
    assert mine["accuracy"] == pytest.approx(1.0, abs=1e-9) and mine["se"] == pytest.approx(0.0, abs=1e-9)
    assert base["accuracy"] < 0.99 and base["se"] > 0 and mine["gain"] > 0
    pd.DataFrame({"sentence1": [a for a, _ in pairs], "sentence2": [b for _, b in pairs],
                  "score": [-s for s in own]}).to_csv(tmp_path / "reversed.csv", index=False)
    assert sts_rows(out, tmp_path / "reversed.csv", bootstrap=10)[0]["accuracy"] == pytest.approx(-1.0, abs=1e-9)
    assert spearman_se(0.5, 103) == pytest.approx(0.75 * np.sqrt(1.06 / 100))

    assert "STS Spearman" in format_table(rows) and "Spearman's rho" in format_table(rows)
