"""Reading a word2vec corpus: text files or folders, JSON lines (or JSON arrays) and parquet files,
plain or compressed (.gz, .bz2, .xz), tokenised by the simple word pattern or a trained tokenizer.

A line of text (a row of JSON or parquet, a line within it) is a sentence: context windows do not
cross it, and a longer one is cut every ``MAX_SENTENCE`` words, as gensim does. The corpus comes as
flat token lists of about a megabyte of text each, with ``BREAK`` at every line end, so tokenising
is one regular-expression pass per block and not a Python call per line. Nothing here imports torch
or datasets; memory stays bounded, also for a file that is one long line (text8).
"""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import logging
import lzma
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from multissl.word2vec.vocab import BREAK, MAX_SENTENCE, WORD, sentence_blocks

log = logging.getLogger(__name__)

BLOCK_BYTES = 1 << 20  # text per block; a line longer than this is cut at whitespace
SUFFIXES = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
OPENERS: dict[str, Callable] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
WORD_OR_BREAK = re.compile(WORD.pattern + "|\n", re.UNICODE)


def file_kind(path: Path) -> str:
    """text, json or parquet, from the suffix under any compression suffix (unknown: text)."""
    suffixes = path.suffixes[-2:] if path.suffix in OPENERS else path.suffixes[-1:]
    return SUFFIXES.get(suffixes[0] if suffixes else "", "text")


def resolve_corpus(paths: Iterable[str]) -> tuple[str, list[Path]]:
    """The kind and the sorted files of the given files, folders (recursive: known suffixes only)
    and globs; one-line errors for a path that matches nothing and for mixed kinds."""
    files: list[Path] = []
    for part in paths:
        p = Path(part)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _known(f))
            if not found:
                raise FileNotFoundError(f"{part}: no {', '.join(SUFFIXES)} files in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            hits = sorted(Path(h) for h in glob.glob(part, recursive=True) if Path(h).is_file())
            if not hits:
                raise FileNotFoundError(f"{part}: no such file, folder or glob match")
            files += hits
    kinds = {file_kind(f) for f in files}
    if len(kinds) != 1:
        raise ValueError(f"the corpus mixes file kinds {sorted(kinds)}; train on one kind at a time")
    return kinds.pop(), files


def _known(path: Path) -> bool:
    name = path.name[: -len(path.suffix)] if path.suffix in OPENERS else path.name
    return Path(name).suffix in SUFFIXES


def _open(path: Path):
    return OPENERS.get(path.suffix, open)(path, "rb")


def text_blocks(path: Path, stats: dict[str, int], block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """A text file as blocks of whole lines (a line longer than a block is cut at whitespace, and
    goes on in the next block). UTF-8; lines with undecodable bytes are read with replacement
    characters and counted in ``stats["invalid_utf8"]``."""
    with _open(path) as fh:
        carry = b""
        while raw := fh.read(block_bytes):
            raw = carry + raw
            cut = raw.rfind(b"\n") + 1 or max(raw.rfind(b" "), raw.rfind(b"\t")) + 1 or len(raw)
            raw, carry = raw[:cut], raw[cut:]
            yield _decode(raw, stats)
        if carry:
            yield _decode(carry, stats)


def _decode(raw: bytes, stats: dict[str, int]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        bad = 0
        for line in raw.split(b"\n"):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                bad += 1
        stats["invalid_utf8"] = stats.get("invalid_utf8", 0) + bad
        return raw.decode("utf-8", errors="replace")


def json_texts(path: Path, column: str, stats: dict[str, int]) -> Iterator[str]:
    """The ``column`` of each row of a JSON lines file (or of a JSON array of rows). A line that is
    not JSON, or whose value is not a string, is skipped and counted in ``stats["bad_rows"]``; a
    row without the column is an error."""
    with _open(path) as fh:
        head = fh.read(1 << 16).lstrip()
        fh.seek(0)
        rows = json.load(fh) if head.startswith(b"[") else _json_lines(fh, path, stats)
        for n, row in enumerate(rows, 1):
            if not isinstance(row, dict):
                stats["bad_rows"] = stats.get("bad_rows", 0) + 1
                continue
            if column not in row:
                raise KeyError(f"{path}: row {n} has no column {column!r} (pass --text-column)")
            text = row[column]
            if isinstance(text, str):
                yield text
            elif text is not None:
                stats["bad_rows"] = stats.get("bad_rows", 0) + 1


def _json_lines(fh, path: Path, stats: dict[str, int]) -> Iterator[dict]:
    for line in fh:
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError:
                stats["bad_rows"] = stats.get("bad_rows", 0) + 1
                if stats["bad_rows"] <= 3:
                    log.warning("%s: skipping a line that is not JSON: %.60r", path, line)


def parquet_texts(path: Path, column: str, stats: dict[str, int]) -> Iterator[str]:
    """The string ``column`` of a parquet file, batch by batch (missing values are skipped)."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    if column not in f.schema_arrow.names:
        raise KeyError(f"{path}: no column {column!r} (columns: {f.schema_arrow.names}; pass --text-column)")
    for batch in f.iter_batches(columns=[column], batch_size=4096):
        yield from (t for t in batch.column(0).to_pylist() if t is not None)


def _join(texts: Iterable[str], block_chars: int = BLOCK_BYTES) -> Iterator[str]:
    """Rows of text as blocks of whole lines, each row ending a line."""
    parts, size = [], 0
    for text in texts:
        parts.append(text)
        size += len(text)
        if size >= block_chars:
            yield "\n".join(parts) + "\n"
            parts, size = [], 0
    if parts:
        yield "\n".join(parts) + "\n"


class Corpus:
    """Files to train on, re-read for every pass (see the module docstring)."""

    def __init__(self, paths: Iterable[str], text_column: str = "text", tokenizer: str | None = None,
                 block_bytes: int = BLOCK_BYTES):
        self.kind, self.files = resolve_corpus(paths)
        self.text_column = text_column
        self.block_bytes = block_bytes
        self.stats: dict[str, int] = {}
        """What reading skipped or repaired: invalid_utf8 (lines), bad_rows (JSON rows)."""
        self._tokenize = _pattern_tokens
        if tokenizer:
            from transformers import AutoTokenizer

            self._tokenize = _piece_tokens(AutoTokenizer.from_pretrained(tokenizer).tokenize)

    def text(self) -> Iterator[str]:
        """The corpus as blocks of lines."""
        for f in self.files:
            if self.kind == "text":
                yield from text_blocks(f, self.stats, self.block_bytes)
            elif self.kind == "json":
                yield from _join(json_texts(f, self.text_column, self.stats), self.block_bytes)
            else:
                yield from _join(parquet_texts(f, self.text_column, self.stats), self.block_bytes)
            if self.kind == "text":
                yield BREAK  # a file's last line ends with the file

    def token_blocks(self) -> Iterator[list[str]]:
        """Tokens of each block, ``BREAK`` at line ends."""
        for block in self.text():
            yield self._tokenize(block)

    def sentences(self) -> Iterator[list[str]]:
        """Token lists per sentence (for callers that take sentences, such as the GPU trainer)."""
        return split_sentences(self.token_blocks())


def _pattern_tokens(block: str) -> list[str]:
    """The simple tokenizer (:func:`multissl.word2vec.vocab.simple_tokenize`) over a whole block."""
    return WORD_OR_BREAK.findall(block.lower())


def _piece_tokens(tokenize: Callable[[str], list[str]]) -> Callable[[str], list[str]]:
    def tokens(block: str) -> list[str]:
        lines = block.split(BREAK)
        out: list[str] = []
        for i, line in enumerate(lines):
            out += tokenize(line)
            if i < len(lines) - 1:
                out.append(BREAK)
        return out

    return tokens


class SentenceCorpus:
    """A corpus given as a function that returns an iterable of token lists (one per sentence)."""

    def __init__(self, sentences: Callable[[], Iterable[list[str]]]):
        self._sentences = sentences
        self.stats: dict[str, int] = {}

    def token_blocks(self) -> Iterator[list[str]]:
        return sentence_blocks(self._sentences())

    def sentences(self) -> Iterator[list[str]]:
        return iter(self._sentences())


def split_sentences(blocks: Iterable[list[str]]) -> Iterator[list[str]]:
    """Token blocks back to sentences, cut at ``BREAK`` and every ``MAX_SENTENCE`` tokens (empty
    lines give none)."""
    line: list[str] = []
    for block in blocks:
        start = 0
        while start <= len(block):
            try:
                end = block.index(BREAK, start)
            except ValueError:
                end = len(block)
            line += block[start:end]
            while len(line) >= MAX_SENTENCE:
                yield line[:MAX_SENTENCE]
                line = line[MAX_SENTENCE:]
            if end == len(block):
                break
            if line:
                yield line
            line, start = [], end + 1
    if line:
        yield line
