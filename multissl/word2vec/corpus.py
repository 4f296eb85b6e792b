"""Streaming a word2vec corpus: text files or folders, or JSON lines / parquet through ``datasets``,
tokenised by the simple word pattern or by a trained tokenizer. Nothing is held in memory: each
call of the returned factory reads the files again (one pass per epoch)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from multissl.word2vec.vocab import simple_tokenize

log = logging.getLogger(__name__)

MAX_PIECE = 1 << 20  # characters: a line longer than this is read in pieces, split at whitespace


def iter_pieces(path: Path, stats: dict[str, int]) -> Iterator[str]:
    """Lines of a text file, decoded as UTF-8 with undecodable bytes replaced (and counted);
    over-long lines come in pieces cut at whitespace, so memory stays bounded."""
    with open(path, "rb") as fh:
        carry = b""
        while True:
            raw = fh.readline(MAX_PIECE)
            if not raw:
                break
            if not raw.endswith(b"\n") and len(raw) == MAX_PIECE:
                cut = max(raw.rfind(b" "), raw.rfind(b"\t"))
                if cut > 0:
                    raw, carry_next = raw[:cut], raw[cut + 1:]
                else:
                    carry_next = b""
                raw, carry = carry + raw, carry_next
            else:
                raw, carry = carry + raw, b""
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                stats["invalid_utf8"] = stats.get("invalid_utf8", 0) + 1
                yield raw.decode("utf-8", errors="replace")
        if carry:
            yield carry.decode("utf-8", errors="replace")


def corpus_factory(paths: list[str], text_column: str = "text",
                   tokenizer: str | None = None) -> tuple[Callable[[], Iterator[list[str]]], dict[str, int]]:
    """A function that streams the corpus as token lists, and the stats it fills while reading."""
    from multissl.data.text import resolve_files

    builder, files = resolve_files(",".join(paths))
    stats: dict[str, int] = {}
    if tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
        tokenize = tok.tokenize
    else:
        tokenize = simple_tokenize

    def lines() -> Iterator[str]:
        if builder == "text":
            for f in files:
                yield from iter_pieces(Path(f), stats)
        else:
            import datasets

            ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=True)
            for row in ds:
                text = row.get(text_column)
                if text is None:
                    raise KeyError(f"no column {text_column!r} in {files[0]} (pass --text-column)")
                yield text

    def sentences() -> Iterator[list[str]]:
        for line in lines():
            tokens = tokenize(line)
            for i in range(0, len(tokens), 10000):  # gensim's longest sentence
                yield tokens[i:i + 10000]

    return sentences, stats
