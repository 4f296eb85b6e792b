"""Reading word2vec corpora without torch or datasets: files, folders, compression, JSON, parquet."""

import bz2
import json

import numpy as np
import pytest

from multissl.word2vec.corpus import Corpus, resolve_corpus
from multissl.word2vec.vocab import BREAK, MAX_SENTENCE, WordIds, encode_blocks, scan, simple_tokenize
from tests.conftest import KJV


def test_the_shipped_json_lines_gz_reads_row_by_row(kjv_rows):
    corpus = Corpus([str(KJV)])
    assert corpus.kind == "json"
    expected = [t for t in (simple_tokenize(r["text"]) for r in kjv_rows) if t]
    assert list(corpus.sentences()) == expected and corpus.stats == {}


def test_blocks_cut_inside_long_lines_lose_nothing(tmp_path, kjv_rows):
    verses = [r["text"] for r in kjv_rows[:200]]
    long_line = " ".join(verses[:150] * 3)  # about 12,000 words on one line
    path = tmp_path / "c.txt.bz2"
    path.write_bytes(bz2.compress(("\n".join(verses[150:170]) + "\n" + long_line + "\n\n" + verses[170]).encode()))
    expected = [simple_tokenize(v) for v in verses[150:170]]
    words = simple_tokenize(long_line)
    expected += [words[i:i + MAX_SENTENCE] for i in range(0, len(words), MAX_SENTENCE)]
    expected.append(simple_tokenize(verses[170]))  # the last line has no newline; the empty one gives nothing
    for block_bytes in (64, 1000, 1 << 20):  # lines cut at whitespace, at newlines, or whole
        assert list(Corpus([str(path)], block_bytes=block_bytes).sentences()) == expected
    ids, lengths = zip(*encode_blocks(Corpus([str(path)], block_bytes=64).token_blocks(), WordIds()), strict=True)
    assert np.concatenate(lengths).tolist() == [len(s) for s in expected]


def test_scan_counts_like_a_counter(kjv_rows):
    from collections import Counter

    sentences = [simple_tokenize(r["text"]) for r in kjv_rows[:3000]]
    blocks = [sum((s + [BREAK] for s in sentences[i:i + 500]), []) for i in range(0, 3000, 500)]
    vocab, cache = scan(blocks, min_count=3, cache_words=10**6)
    counts = Counter(w for s in sentences for w in s)
    assert dict(zip(vocab.words, vocab.counts.tolist(), strict=True)) == {w: c for w, c in counts.items() if c >= 3}
    flat = np.concatenate([ids for ids, _ in cache])
    assert flat.tolist() == [vocab.index.get(w, -1) for s in sentences for w in s]


def test_json_and_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = [json.dumps({"text": "In the beginning"}), "{not json", json.dumps({"text": None}), json.dumps([1]),
             json.dumps({"text": "God created\nthe heaven"})]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    corpus = Corpus([str(tmp_path / "a.jsonl")])
    assert list(corpus.sentences()) == [["in", "the", "beginning"], ["god", "created"], ["the", "heaven"]]
    assert corpus.stats == {"bad_rows": 2}  # the broken line and the list; a null text is no row
    (tmp_path / "b.json").write_text(json.dumps([{"body": "And the earth"}, {"body": "was without form"}]))
    assert list(Corpus([str(tmp_path / "b.json")], text_column="body").sentences()) == [
        ["and", "the", "earth"], ["was", "without", "form"]]
    with pytest.raises(KeyError, match="b.json: row 1 has no column 'text'"):
        list(Corpus([str(tmp_path / "b.json")]).sentences())
    pq.write_table(pa.table({"text": ["Let there be light", None, "and there was light"]}), tmp_path / "c.parquet")
    assert list(Corpus([str(tmp_path / "c.parquet")]).sentences()) == [
        ["let", "there", "be", "light"], ["and", "there", "was", "light"]]
    with pytest.raises(KeyError, match="c.parquet: no column 'body'"):
        list(Corpus([str(tmp_path / "c.parquet")], text_column="body").sentences())


def test_paths_folders_and_globs(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "x.txt").write_text("a\n")
    (tmp_path / "d" / "e" / "y.txt.gz").write_bytes(b"")
    (tmp_path / "d" / "notes.md").write_text("left out: not a corpus suffix\n")
    kind, files = resolve_corpus([str(tmp_path / "d")])
    assert kind == "text" and [f.name for f in files] == ["y.txt.gz", "x.txt"]
    assert resolve_corpus([str(tmp_path / "d" / "*.txt")])[1] == [tmp_path / "d" / "x.txt"]
    with pytest.raises(FileNotFoundError, match="nothing.txt: no such file"):
        resolve_corpus([str(tmp_path / "nothing.txt")])
    (tmp_path / "d" / "z.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match=r"mixes file kinds \['json', 'text'\]"):
        resolve_corpus([str(tmp_path / "d")])
