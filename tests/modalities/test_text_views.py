"""Sentence views of text (the text modality's views path, for SimCSE and SupCon): one verse per
example, tokenised on its own as the tokenizer encodes a sentence, truncated and padded per batch;
dropout copies or columns of a table; labels carried through the view collator; missing columns are
one-line errors naming the key."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from multissl.data.labels import label_id
from multissl.recipe import RecipeError, load_recipe
from multissl.train import build_model
from tests.conftest import ROOT

SMALL = ["--encoder.dim", "32", "--encoder.depth", "2", "--encoder.heads", "4", "--encoder.ffn_dim", "64",
         "--adapter.max_length", "24"]


@pytest.fixture(scope="module")
def verse_table(tmp_path_factory, kjv_rows):
    """60 verses as a CSV, a JSON lines and a parquet table: the verse, the next verse, a verse from far
    away (a hard negative), the section (a label), and a label seen once."""
    rows = kjv_rows[1000:1060]
    df = pd.DataFrame({"sent0": [r["text"] for r in rows], "sent1": [kjv_rows[1001 + i]["text"] for i in range(60)],
                       "hard_neg": [kjv_rows[20000 + i]["text"] for i in range(60)],
                       "section": [r["section"] for r in rows]})
    df.loc[3, "section"] = "only-once"
    folder = tmp_path_factory.mktemp("tables")
    df.to_csv(folder / "verses.csv", index=False)
    df.to_json(folder / "verses.jsonl", orient="records", lines=True)
    df.to_parquet(folder / "verses.parquet")
    return folder, df


def _build(recipe: str, args: list[str]):
    return build_model(load_recipe(ROOT / "recipes" / "text" / f"{recipe}.yaml", [*SMALL, *args]))


def test_dropout_copies_are_the_tokenised_sentence(kjv_file, tokenizer_dir):
    args = ["--data", str(kjv_file), "--tokenizer", str(tokenizer_dir)]
    _, _, dataset, collator, tok, _ = _build("simcse-tiny", args)
    lines = kjv_file.read_text().splitlines()
    assert len(dataset) == sum(bool(line.strip()) for line in lines)
    batch = collator([dataset[i] for i in range(5)])
    assert batch["global_views"] == 2 and "labels" not in batch
    a, b = (v["input_ids"] for v in batch["views"])
    assert torch.equal(a, b)  # the views differ by dropout only
    want = tok(lines[:5], truncation=True, max_length=24, padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(a, want)  # what the tokenizer (and sentence-transformers) makes of each sentence
    assert a.shape[1] <= 24 and (a[:, 0] == tok.cls_token_id).all()


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_supervised_pairs_and_hard_negatives_come_from_columns(suffix, verse_table, tokenizer_dir):
    folder, df = verse_table
    args = ["--data", str(folder / f"verses.{suffix}"), "--tokenizer", str(tokenizer_dir),
            "--views.columns", "[sent0, sent1, hard_neg]"]
    _, model, dataset, collator, tok, _ = _build("simcse-tiny", args)
    batch = collator([dataset[i] for i in range(4)])
    assert len(batch["views"]) == 3
    for view, column in zip(batch["views"], ["sent0", "sent1", "hard_neg"], strict=True):
        want = tok(df[column][:4].tolist(), truncation=True, max_length=24, padding=True)["input_ids"]
        assert view["input_ids"].tolist() == want
    assert torch.isfinite(model(**batch)["loss"])


def test_a_missing_column_is_a_one_line_error_naming_it(verse_table, tokenizer_dir, kjv_file):
    folder, _ = verse_table
    cases = [("simcse-tiny", ["--data", str(folder / "verses.csv"), "--views.columns", "[sent0, positive]"],
              "views.columns: no column 'positive' in"),
             ("simcse-tiny", ["--data", str(folder / "verses.jsonl"), "--text_column", "body"],
              "data.text_column: no column 'body' in"),
             ("supcon-tiny", ["--data", str(folder / "verses.parquet"), "--text_column", "sent0", "--label-column",
                              "topic"], "data.label_column: no column 'topic' in"),
             ("simcse-tiny", ["--data", str(kjv_file), "--views.columns", "[a, b]"], "views.columns: "),
             ("supcon-tiny", ["--data", str(kjv_file)], "data.label_column: ")]
    for recipe, args, message in cases:
        with pytest.raises(RecipeError) as e:
            _build(recipe, [*args, "--tokenizer", str(tokenizer_dir)])
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(RecipeError, match="views.columns needs 2 columns or more"):
        load_recipe(ROOT / "recipes" / "text" / "simcse-tiny.yaml", ["--views.columns", "[sent0]"])
    with pytest.raises(RecipeError, match="data.label_column is empty: method 'supcon' trains on labels"):
        load_recipe(ROOT / "recipes" / "text" / "supcon-tiny.yaml", ["--label-column", ""])
    with pytest.raises(RecipeError, match="data.label_column: method 'simcse' takes no labels"):
        load_recipe(ROOT / "recipes" / "text" / "simcse-tiny.yaml", ["--label-column", "section"])


def test_labels_ride_through_the_collator_by_id_a_label_seen_once_included(verse_table, tokenizer_dir):
    folder, df = verse_table
    args = ["--data", str(folder / "verses.jsonl"), "--text_column", "sent0", "--label-column", "section",
            "--tokenizer", str(tokenizer_dir)]
    _, model, dataset, collator, _, _ = _build("supcon-tiny", args)
    batch = collator([dataset[i] for i in range(6)])
    assert batch["labels"].tolist() == [label_id(s) for s in df["section"][:6]]
    assert batch["labels"].tolist().count(label_id("only-once")) == 1
    assert torch.isfinite(model(**batch)["loss"])
