import pytest
from transformers import AutoTokenizer

from multissl.tokenizer import train_tokenizer


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_trained_tokenizers_load_with_autotokenizer(tmp_path, kjv_file, kind):
    out = tmp_path / kind
    train_tokenizer([kjv_file], out, kind=kind, vocab_size=600)
    tok = AutoTokenizer.from_pretrained(out)
    assert 300 < len(tok) <= 700
    for attr in ("pad_token_id", "mask_token_id", "cls_token_id", "sep_token_id"):
        assert getattr(tok, attr) is not None
    ids = tok("And God said, Let there be light")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    text = tok.decode(ids, skip_special_tokens=True)
    assert text.strip().lower() == "and god said, let there be light" or text.replace(" ,", ",").strip().lower() \
        == "and god said, let there be light"


def test_existing_output_folder_and_bad_bytes(tmp_path, kjv_file, caplog):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="exists"):
        train_tokenizer([kjv_file], out, vocab_size=500)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(kjv_file.read_bytes()[:20000] + b"\xc3\x28 invalid\n")
    with caplog.at_level("WARNING"):
        train_tokenizer([bad], tmp_path / "t2", vocab_size=400)
    assert "1 lines with invalid UTF-8" in caplog.text
    with pytest.raises(FileNotFoundError, match="no such file"):
        train_tokenizer([tmp_path / "nope.txt"], tmp_path / "t3")
