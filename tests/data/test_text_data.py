import json
import re

import numpy as np
import pytest
import torch

from multissl.core.adapter import StudentView
from multissl.data.masking import MaskConfig
from multissl.modalities.text.data import TextCollator, build_text_dataset, load_corpus, resolve_files
from multissl.modalities.text.model import TextConfig, load_tokenizer
from multissl.recipe import DataConfig, RecipeError
from tests.conftest import first_pass


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return load_tokenizer(str(tokenizer_dir))


def text_cfg(tok, max_length=32, mask_with="token"):
    return TextConfig(max_length=max_length, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                      mask_token_id=tok.mask_token_id, mask_with=mask_with)


def test_formats_give_the_same_blocks(tmp_path, kjv_rows, tok):
    texts = [r["text"] for r in kjv_rows[:300]]
    (tmp_path / "a.txt").write_text("\n".join(texts) + "\n")
    with open(tmp_path / "b.jsonl", "w") as fh:
        for t in texts:
            fh.write(json.dumps({"body": t, "other": 1}) + "\n")
    import pandas as pd

    pd.DataFrame({"body": texts}).to_parquet(tmp_path / "c.parquet")
    cfg = text_cfg(tok)
    blocks = []
    for name in ("a.txt", "b.jsonl", "c.parquet"):
        ds = build_text_dataset(DataConfig(path=str(tmp_path / name), text_column="body"), tok, cfg, seed=0)
        blocks.append([ds[i]["input_ids"] for i in range(len(ds))])
    assert blocks[0] == blocks[1] == blocks[2]
    first = blocks[0][0]
    assert len(first) == 32 and first[0] == tok.cls_token_id
    decoded = tok.decode(first[1:])
    assert decoded.replace("</s>", " ").split()[:3] == texts[0].split()[:3]


def test_streaming_matches_loaded(tmp_path, kjv_file, tok):
    cfg = text_cfg(tok)
    loaded = build_text_dataset(DataConfig(path=str(kjv_file)), tok, cfg, seed=0)
    in_order = build_text_dataset(DataConfig(path=str(kjv_file), streaming=True, shuffle_buffer=0), tok, cfg, seed=0)
    first = [ex["input_ids"] for _, ex in zip(range(20), in_order, strict=False)]
    assert first == [loaded[i]["input_ids"] for i in range(20)]
    shuffled = build_text_dataset(DataConfig(path=str(kjv_file), streaming=True, shuffle_buffer=50), tok, cfg, seed=0)
    mixed = [ex["input_ids"] for _, ex in zip(range(20), shuffled, strict=False)]
    blocks = [loaded[i]["input_ids"] for i in range(70)]
    assert mixed != first and all(b in blocks for b in mixed)  # drawn from a 50-block buffer


def test_blank_lines_and_bad_bytes_are_handled_and_counted(tmp_path, kjv_rows, tok, caplog):
    body = "\n".join(r["text"] for r in kjv_rows[:200]).encode()
    (tmp_path / "bad.txt").write_bytes(b"\n\n   \n" + body[:500] + b"\xff\xfe broken\n" + body[500:] + b"\n\n")
    with caplog.at_level("WARNING"):
        ds = build_text_dataset(DataConfig(path=str(tmp_path / "bad.txt")), tok, text_cfg(tok), seed=0)
    assert len(ds) > 10
    assert "blank lines skipped" in caplog.text and "1 lines had undecodable bytes" in caplog.text


def test_bad_paths_and_columns_are_one_line_errors(tmp_path, tok):
    with pytest.raises(RecipeError, match="no such file"):
        resolve_files(str(tmp_path / "missing.txt"))
    with pytest.raises(RecipeError, match="data.path is empty"):
        resolve_files("")
    (tmp_path / "x.jsonl").write_text('{"a": "b"}\n')
    with pytest.raises(RecipeError, match="no column 'text'"):
        load_corpus(DataConfig(path=str(tmp_path / "x.jsonl")))
    (tmp_path / "short.txt").write_text("In the beginning.\n")
    with pytest.raises(RecipeError, match="fewer tokens than one block"):
        build_text_dataset(DataConfig(path=str(tmp_path / "short.txt")), tok, text_cfg(tok), seed=0)


def test_folder_input_reads_recursively(tmp_path, kjv_rows, tok):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "one.txt").write_text("\n".join(r["text"] for r in kjv_rows[:100]))
    (tmp_path / "two.txt").write_text("\n".join(r["text"] for r in kjv_rows[100:200]))
    builder, files = resolve_files(str(tmp_path))
    assert builder == "text" and len(files) == 2


def test_v2_collator_exact_masks_per_clone_and_reproducible(tok, kjv_file):
    cfg = text_cfg(tok)
    ds = build_text_dataset(DataConfig(path=str(kjv_file)), tok, cfg, seed=3)
    col = TextCollator(MaskConfig(kind="random", prob=0.48), cfg, StudentView(dense=False, clones=8))
    b1, b2 = col([ds[0], ds[1]]), col([ds[0], ds[1]])
    assert torch.equal(b1["mask"], b2["mask"]) and b1["mask"].shape == (16, 32)
    assert "student_inputs" not in b1  # v2 drops tokens in the model
    n = b1["mask"].sum(1)
    assert (n == n[0]).all() and n[0] == 31 - int(31 * 0.52)  # bos is never masked
    assert not b1["mask"][:, 0].any()
    assert len({tuple(r.tolist()) for r in b1["mask"]}) == 16
    ds.set_epoch(1)
    assert not torch.equal(col([ds[0], ds[1]])["mask"], b1["mask"])


def test_v1_bert_collator(tok, kjv_file):
    cfg = text_cfg(tok, max_length=128)
    ds = build_text_dataset(DataConfig(path=str(kjv_file)), tok, cfg, seed=0)
    col = TextCollator(MaskConfig(kind="bert", prob=0.15), cfg, StudentView(dense=True))
    b = col([ds[i] for i in range(64)])
    ids, student, mask = b["inputs"]["input_ids"], b["student_inputs"]["input_ids"], b["mask"]
    assert (student[mask] == tok.mask_token_id).all()
    assert abs(mask.float().mean().item() - 0.15 * 0.8) < 0.02
    changed = (student != ids) & ~mask
    assert abs(changed.float().mean().item() - 0.15 * 0.1) < 0.01
    specials = np.array([tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id])
    assert not np.isin(student[changed].numpy(), specials).any()


def test_streamed_text_names_and_counts_bad_input_per_file(tmp_path, kjv_rows, tok, caplog):
    """Undecodable bytes and a file of blank lines: named per file and counted as they come (the loaded
    path counts them when it loads); the stream's blocks are the loaded path's."""
    d = tmp_path / "txt"
    d.mkdir()
    (d / "a_good.txt").write_text("\n".join(r["text"] for r in kjv_rows[:100]) + "\n")
    (d / "b_latin1.txt").write_bytes(("Caf\xe9 na\xefve r\xe9sum\xe9\n" * 40).encode("latin-1"))
    (d / "c_blank.txt").write_text("\n   \n\t\n")
    with caplog.at_level("WARNING"):
        examples = first_pass(build_text_dataset(DataConfig(path=str(d), streaming=True, shuffle_buffer=0), tok,
                                                 text_cfg(tok), seed=0))
    loaded = build_text_dataset(DataConfig(path=str(d)), tok, text_cfg(tok), seed=0)
    assert [e["input_ids"] for e in examples] == [loaded[i]["input_ids"] for i in range(len(loaded))]
    assert f"{d / 'b_latin1.txt'}: 40 of 40 lines had undecodable bytes, read as U+FFFD (" in caplog.text
    assert f"skipped {d / 'c_blank.txt'}: only blank lines (3)" in caplog.text
    assert re.search(r"\(\d+ file\(s\) skipped so far\)", caplog.text)


def test_a_file_without_the_text_column_is_named_loaded_and_streamed(tmp_path, kjv_rows, tok, caplog):
    d = tmp_path / "json"
    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in kjv_rows[:100]))
    (d / "b.jsonl").write_text("".join(json.dumps({"body": r["text"]}) + "\n" for r in kjv_rows[100:120]))
    with pytest.raises(RecipeError, match=rf"data.path: {d / 'b.jsonl'}: no column 'text' \(columns: \['body'\]\)"):
        load_corpus(DataConfig(path=str(d)))
    with caplog.at_level("WARNING"):
        examples = first_pass(build_text_dataset(DataConfig(path=str(d), streaming=True, shuffle_buffer=0), tok,
                                                 text_cfg(tok), seed=0))
    assert examples and f"skipped {d / 'b.jsonl'}: no column 'text'" in caplog.text
    strict = build_text_dataset(DataConfig(path=str(d), streaming=True, shuffle_buffer=0, strict=True), tok,
                                text_cfg(tok), seed=0)
    with pytest.raises(RecipeError, match=rf"{d / 'b.jsonl'}: no column 'text'.*data.strict"):
        first_pass(strict)


def test_a_stream_shorter_than_one_block_is_an_error_not_an_empty_run(tmp_path, tok):
    (tmp_path / "short.txt").write_text("In the beginning.\n")
    stream = build_text_dataset(DataConfig(path=str(tmp_path / "short.txt"), streaming=True), tok, text_cfg(tok), 0)
    with pytest.raises(RecipeError, match="the stream has no examples"):
        next(iter(stream))


def test_unrecognised_files_in_a_text_folder_are_named_and_counted(tmp_path, kjv_rows, caplog):
    (tmp_path / "a.txt").write_text("\n".join(r["text"] for r in kjv_rows[:10]))
    (tmp_path / "notes.md").write_text("# notes")
    (tmp_path / "table.csv").write_text("a,b\n")
    with caplog.at_level("WARNING"):
        assert resolve_files(str(tmp_path)) == ("text", [str(tmp_path / "a.txt")])
    assert f"{tmp_path}: left out 2 file(s) whose extension is not one of" in caplog.text
    assert "notes.md, table.csv" in caplog.text
