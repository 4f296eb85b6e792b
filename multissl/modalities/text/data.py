"""Text data: files through ``datasets`` (text, JSON lines, parquet; loaded or streamed), tokenised and
packed into blocks, and the collator that makes the masks."""

from __future__ import annotations

import glob
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multissl.core.adapter import StudentView
from multissl.data.config import DataConfig
from multissl.data.masking import BERT_MASK, BERT_NONE, BERT_RANDOM, MaskConfig, bert_mask, sample_mask
from multissl.data.seeds import SeededDataset, example_rng
from multissl.data.skipping import warn_unrecognised
from multissl.data.streams import SeededStream
from multissl.errors import RecipeError
from multissl.modalities.text.model import TextConfig

log = logging.getLogger(__name__)

SUFFIXES = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# CSV tables are read when named (folders are scanned for SUFFIXES only)
BUILDERS = {**SUFFIXES, ".csv": "csv"}


def resolve_files(spec: str, fmt: str = "auto") -> tuple[str, list[str]]:
    """The ``datasets`` builder and the sorted files for a comma-separated list of files, folders
    (recursive) and globs."""
    if not spec:
        raise RecipeError("data.path is empty: pass --data FILE_OR_FOLDER")
    files: list[str] = []
    for part in filter(None, (s.strip() for s in spec.split(","))):
        p = Path(part)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file())
            files += [str(f) for f in found if f.suffix in SUFFIXES]
            warn_unrecognised(p, [f for f in found if f.suffix not in SUFFIXES], SUFFIXES)
        elif p.is_file():
            files.append(str(p))
        else:
            hits = sorted(glob.glob(part, recursive=True))
            if not hits:
                raise RecipeError(f"data.path: {part}: no such file, folder or glob match")
            files += hits
    if not files:
        raise RecipeError(f"data.path: {spec}: no {', '.join(SUFFIXES)} files found")
    kinds = {BUILDERS.get(Path(f).suffix, "text") for f in files} if fmt == "auto" else {fmt}
    if len(kinds) > 1:
        raise RecipeError(f"data.path: {spec}: mixes formats {sorted(kinds)}; set data.format or split them")
    return kinds.pop(), files


def load_corpus(cfg: DataConfig):
    """A ``datasets`` Dataset (or IterableDataset when streaming) with one ``text`` column."""
    import datasets

    builder, files = resolve_files(cfg.path, cfg.format)
    empty = [f for f in files if Path(f).stat().st_size == 0]
    if len(empty) == len(files):
        raise RecipeError(f"data.path: {cfg.path}: every file is empty ({', '.join(empty[:3])})")
    if empty:
        log.warning("data: skipping %d empty file(s): %s", len(empty), ", ".join(empty[:5]))
        files = [f for f in files if f not in empty]
    if cfg.streaming:
        why = _unusable(files[0], builder, cfg.text_column)  # the first file's problems are known now
        if why:
            raise RecipeError(f"data.path: {files[0]}: {why}")
        features = datasets.Features({"text": datasets.Value("string")})
        # one shard per file, so ranks and workers split them; each row knows its file
        return datasets.IterableDataset.from_generator(
            _streamed_text, features=features,
            gen_kwargs={"files": files, "builder": builder, "column": cfg.text_column, "strict": cfg.strict})
    kwargs: dict[str, Any] = {"encoding_errors": "replace"} if builder == "text" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=files, split="train", **kwargs)
    except Exception as e:  # datasets wraps parse errors in several types
        bad = next(((f, why) for f in files if (why := _unusable(f, builder, cfg.text_column))), None)
        if bad:
            raise RecipeError(f"data.path: {bad[0]}: {bad[1]}") from None
        raise RecipeError(f"data.path: could not read {', '.join(files[:3])}: {str(e).splitlines()[0]}") from None
    if builder != "text":
        if cfg.text_column not in ds.column_names:
            raise RecipeError(f"data.text_column: no column {cfg.text_column!r} in {files[0]} "
                              f"(columns: {ds.column_names})")
        ds = ds.select_columns([cfg.text_column])
        if cfg.text_column != "text":
            ds = ds.rename_column(cfg.text_column, "text")
    return ds


def _open_rows(file: str, builder: str) -> Any:
    """One file's rows, as the ``datasets`` builder reads them (text: lines, undecodable bytes as U+FFFD)."""
    import datasets

    kwargs: dict[str, Any] = {"encoding_errors": "replace"} if builder == "text" else {}
    return datasets.load_dataset(builder, data_files=[file], split="train", streaming=True, **kwargs)


def _unusable(file: str, builder: str, column: str) -> str:
    """Why ``file`` cannot be read for its text (its first row is read), or ""."""
    if builder == "text":
        return ""
    try:
        rows = _open_rows(file, builder)
        columns = rows.column_names if rows.column_names is not None else list(rows.features or {})
        if column not in columns:
            return f"no column {column!r} (columns: {columns}); set data.text_column"
        next(iter(rows), None)
    except Exception as e:  # datasets and pyarrow raise several types for malformed files
        return f"unreadable ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})"
    return ""


# Streamed files with problems, counted per process as they come (a stream has no end to count at).
_streamed_problems: Counter[str] = Counter()


def _streamed_text(files: list[str], builder: str, column: str, strict: bool) -> Any:
    """Rows ``{"text"}`` of a stream's files (datasets calls it per file, its shard), read as the loaded
    path reads them. A file that cannot be read (or lacks the column) is skipped with a warning naming
    it (raised with ``strict``), as is one of nothing but blank lines; lines with undecodable bytes are
    counted per file. Each warning carries the count so far."""
    for file in files:
        blank = bad = lines = 0
        try:
            if builder == "text":  # what the text builder does, without building one per file
                with open(file, encoding="utf-8", errors="replace") as fh:
                    for line in fh:
                        text = line.rstrip("\n")
                        lines += 1
                        blank += not text.strip()
                        bad += "\ufffd" in text
                        yield {"text": text}
            else:
                why = _unusable(file, builder, column)
                if why:
                    raise ValueError(why)
                for row in _open_rows(file, builder):
                    text = row[column]
                    lines += 1
                    blank += not (text and text.strip())
                    yield {"text": text}
        except Exception as e:  # a malformed file, found as it is streamed
            if strict:
                raise RecipeError(f"data.path: {file}: {e} (data.strict is set)") from None
            _streamed_problems["skipped"] += 1
            log.warning("data: skipped %s: %s (%d file(s) skipped so far)", file,
                        str(e).splitlines()[0][:200] if str(e) else type(e).__name__, _streamed_problems["skipped"])
            continue
        if lines and blank == lines:
            _streamed_problems["skipped"] += 1
            log.warning("data: skipped %s: only blank lines (%d) (%d file(s) skipped so far)", file, lines,
                        _streamed_problems["skipped"])
        if bad:
            _streamed_problems["undecodable"] += bad
            log.warning("data: %s: %d of %d lines had undecodable bytes, read as U+FFFD (%d such lines so far)", file,
                        bad, lines, _streamed_problems["undecodable"])


def pack_blocks(ds, tokenizer, text: TextConfig):
    """Tokenise documents (rows) and pack them into blocks of ``text.max_length`` tokens:
    ``bos`` + tokens, documents separated by ``eos``. A trailing partial block is dropped.
    Blank rows are skipped; they and rows with undecodable bytes are counted in the ``n_blank`` and
    ``n_bad`` columns (on the first block each batch of rows produced)."""
    size = text.max_length - 1
    bos, eos = text.bos_token_id, text.eos_token_id

    def tokenize_and_pack(batch: dict[str, list]) -> dict[str, list]:
        docs = [t for t in batch["text"] if t and t.strip()]
        ids = tokenizer(docs, add_special_tokens=False)["input_ids"] if docs else []
        flat: list[int] = []
        for doc in ids:
            flat += doc + [eos]
        n = len(flat) // size
        first = [1] + [0] * (n - 1) if n else []  # counts ride on a batch's first block
        blank, bad = len(batch["text"]) - len(docs), sum("\ufffd" in t for t in docs)
        return {
            "input_ids": [[bos] + flat[i * size:(i + 1) * size] for i in range(n)],
            "n_blank": [blank * f for f in first],
            "n_bad": [bad * f for f in first],
        }

    cols = ["text"]
    kwargs = {} if _is_iterable(ds) else {"desc": "tokenising and packing"}
    return ds.map(tokenize_and_pack, batched=True, batch_size=1000, remove_columns=cols, **kwargs)


def _is_iterable(ds) -> bool:
    import datasets

    return isinstance(ds, datasets.IterableDataset)


def build_text_dataset(cfg: DataConfig, tokenizer, text: TextConfig, seed: int):
    """The pretraining dataset: packed blocks, each example with its own mask seed."""
    ds = pack_blocks(load_corpus(cfg), tokenizer, text)
    if _is_iterable(ds):
        return SeededStream(ds.select_columns(["input_ids"]), seed, shuffle_buffer=cfg.shuffle_buffer)
    if len(ds) == 0:
        raise RecipeError(
            f"data.path: {cfg.path} holds fewer tokens than one block of adapter.max_length="
            f"{text.max_length}; add text or lower adapter.max_length"
        )
    blank, bad = sum(ds["n_blank"]), sum(ds["n_bad"])
    if blank or bad:
        log.warning("data: %d blank lines skipped; %d lines had undecodable bytes (read as U+FFFD)", blank, bad)
    return SeededDataset(ds.select_columns(["input_ids"]), seed)


class TextCollator:
    """Stacks packed blocks and makes the student's masks: ``M`` clones per sample for a sparse
    student (masked tokens are dropped by the model), or <mask> / random / unchanged tokens for a
    dense one.

    >>> c = TextCollator(MaskConfig(kind="random", prob=0.5), TextConfig(8, 10, 1, 0, 2, 4), StudentView(False, 2))
    >>> batch = c([{"input_ids": [0, 5, 6, 7, 8, 9, 5, 2], "seed": (1, 0, 0)}])
    >>> batch["mask"].shape, int(batch["mask"][0].sum())
    (torch.Size([2, 8]), 3)
    """

    def __init__(self, mask: MaskConfig, text: TextConfig, view: StudentView):
        self.mask, self.text, self.view, self.clones = mask, text, view, view.clones
        specials = [text.pad_token_id, text.bos_token_id, text.eos_token_id, text.mask_token_id]
        self.specials = np.array(sorted({s for s in specials if s >= 0}))
        self.ordinary = np.setdiff1d(np.arange(text.vocab_size), self.specials)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        t = max(len(e["input_ids"]) for e in examples)
        ids = np.full((len(examples), t), self.text.pad_token_id, dtype=np.int64)
        for i, e in enumerate(examples):
            ids[i, : len(e["input_ids"])] = e["input_ids"]
        m = self.clones
        masks = np.zeros((len(examples) * m, t), dtype=bool)
        student = np.repeat(ids, m, axis=0)
        use_token = self.view.dense and self.text.mask_with == "token"
        for i, e in enumerate(examples):
            rng = example_rng(e["seed"])
            pos = np.flatnonzero(~np.isin(ids[i], self.specials))
            for c in range(m):
                row = i * m + c
                if self.mask.kind == "bert":
                    codes = bert_mask(len(pos), self.mask.prob, rng, self.mask.bert_mask, self.mask.bert_random)
                    masks[row, pos] = codes == BERT_MASK
                    rand = pos[codes == BERT_RANDOM]
                    student[row, rand] = rng.choice(self.ordinary, len(rand))
                else:
                    masks[row, pos] = sample_mask(self.mask, (len(pos),), rng)
                if use_token:
                    student[row, masks[row]] = self.text.mask_token_id
                if self.mask.kind == "bert" and self.view.bert_selected:
                    masks[row, pos] = codes != BERT_NONE
        batch: dict[str, Any] = {"inputs": {"input_ids": torch.from_numpy(ids)}, "mask": torch.from_numpy(masks)}
        if not np.array_equal(student, np.repeat(ids, m, axis=0)):
            batch["student_inputs"] = {"input_ids": torch.from_numpy(student)}
        return batch

