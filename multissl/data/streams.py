"""Streamed inputs for corpora larger than memory or too many files to scan first. A stream is a
``datasets`` IterableDataset, read in passes (epochs) without end; each rank reads its own part
(``split_dataset_by_node``) and ``datasets`` divides that among DataLoader workers. Every example is
seeded by (seed, epoch, part, index), so a resumed run sees the same examples with the same masks.

Resume: each batch carries its part and the (pass, row) of its last example; the trainer keeps the
newest per part in each checkpoint. A resumed stream skips the rows up to there without decoding
them, and the workers that were one batch ahead send one batch the loader drops, so the batches
come in the order an uninterrupted run would have seen."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from multissl.data.saved_datasets import is_saved_dataset
from multissl.errors import RecipeError

log = logging.getLogger(__name__)

Make = Callable[[dict[str, Any], tuple[int, ...]], dict[str, Any] | None]


def _rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class SeededStream(torch.utils.data.IterableDataset):
    """An endless stream of examples from ``ds``; ``make(row, seed)`` turns a row into an example
    (None: unusable, skipped; it logs why). ``shards_itself`` tells the trainer not to shard it again.

    >>> import datasets
    >>> ds = datasets.Dataset.from_dict({"x": [1, 2, 3]}).to_iterable_dataset()
    >>> it = iter(SeededStream(ds, seed=7))
    >>> [next(it) for _ in range(4)][3]
    {'x': 1, 'seed': (7, 1, 0, 0)}
    """

    shards_itself = True

    def __init__(self, ds: Any, seed: int, make: Make | None = None, shuffle_buffer: int = 0):
        self.ds, self.seed, self.make = ds, seed, make
        if shuffle_buffer > 0:
            self.ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)  # file order and a buffer, per pass
        self._last: dict[int, tuple[int, int]] = {}
        self._ahead: set[int] = set()
        self._batch_size = 0

    def set_epoch(self, epoch: int) -> None:
        """Passes are counted by the stream itself (the Trainer sees one endless epoch)."""

    def resume(self, record: dict[str, Any], batch_size: int) -> int | None:
        """Continue after the batches ``record`` (a :class:`StreamRecord` as saved) counts. Returns how
        many leading batches the loader must drop, or None when this fast path cannot be exact (a
        part had not yet sent a batch, or the ranks or workers changed): then replay the stream.

        >>> import datasets
        >>> stream = SeededStream(datasets.Dataset.from_dict({"x": list(range(6))}).to_iterable_dataset(), 0)
        >>> stream.resume({"parts": 1, "batches": {"0": 1}, "last": {"0": [0, 1]}}, batch_size=2)
        0
        >>> next(iter(stream))
        {'x': 2, 'seed': (0, 0, 0, 2)}
        """
        batches = {int(p): int(n) for p, n in record["batches"].items()}
        if len(batches) < record["parts"]:
            return None
        low = min(batches.values())
        self._last = {int(p): (int(e), int(i)) for p, (e, i) in record["last"].items()}
        self._ahead = {p for p, n in batches.items() if n > low}
        self._batch_size = batch_size
        return len(self._ahead)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from datasets.distributed import split_dataset_by_node

        rank, world = _rank()
        info = torch.utils.data.get_worker_info()
        part = rank * (info.num_workers if info else 1) + (info.id if info else 0)
        ds = split_dataset_by_node(self.ds, rank, world) if world > 1 else self.ds
        last, ahead = self._last.get(part, (-1, -1)), part in self._ahead
        where = f"stream part {part} (rank {rank} of {world}, worker {info.id if info else 0} of " \
                f"{info.num_workers if info else 1})"
        epoch = 0
        while True:
            ds.set_epoch(epoch)
            rows = tried = made = 0
            rejected: list[str] = []
            for i, row in enumerate(ds):
                rows += 1
                if (epoch, i) <= last:
                    continue  # trained on before the checkpoint: read past, not decoded
                tried += 1
                seed = (self.seed, epoch, part, i)
                example = row if self.make is None else self.make(row, seed)
                if example is None:
                    if len(rejected) < 3 and isinstance(row, dict) and "name" in row:
                        rejected.append(str(row["name"]))
                    continue
                made += 1
                example = {**example, "seed": seed}
                if ahead:  # this worker was a batch ahead: one batch for the loader to drop
                    yield from [example] * self._batch_size
                    ahead = False
                yield example
            if rows == 0:
                if world * (info.num_workers if info else 1) == 1:  # the only reader
                    raise RecipeError("data.path: the stream has no examples (text: fewer tokens than one block of "
                                      "adapter.max_length)")
                log.warning("data: %s has no rows (fewer files than ranks x workers?); the other parts go on", where)
                return
            if made == 0 and tried == rows:  # a whole pass and nothing usable: the next would loop for ever
                names = f" ({', '.join(rejected)}, ...)" if rejected else ""
                raise RecipeError(f"data.path: {where}: none of its {rows} rows is usable{names}; see the "
                                  "warnings above")
            epoch += 1


class StreamRecord:
    """Where a rank's streamed batches came from: batches per part and the (pass, row) of each part's
    newest example. The trainer updates it with each batch it trains on and saves it in checkpoints."""

    def __init__(self, parts: int, saved: dict[str, Any] | None = None):
        self.parts = parts
        self.batches: dict[str, int] = dict(saved["batches"]) if saved else {}
        self.last: dict[str, list[int]] = dict(saved["last"]) if saved else {}

    def add(self, position: list[int]) -> None:
        part, epoch, row = (str(position[0]), *position[1:])
        self.batches[part] = self.batches.get(part, 0) + 1
        self.last[part] = [epoch, row]

    def to_dict(self) -> dict[str, Any]:
        return {"parts": self.parts, "batches": self.batches, "last": self.last}


class PositionCollator:
    """Wraps a collator: the batch also holds ``stream_position`` = [part, pass, row] of its newest
    example (a DataLoader worker's batch comes from its one part)."""

    def __init__(self, collate: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.collate = collate

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(examples)
        seeds = [e["seed"] for e in examples]
        batch["stream_position"] = [seeds[0][2], *max((s[1], s[3]) for s in seeds)]
        return batch


def _rows(items: list[tuple[str, bytes | None]]) -> Iterator[dict[str, Any]]:
    for name, data in items:
        yield {"name": name, "bytes": data}


def media_stream(spec: str, column: str, key: str, find: Callable[[str], list[Any]]) -> Any:
    """Rows ``{"name", "bytes"}`` for every part of ``spec``: ``datasets`` folders stream their arrow
    files (``bytes`` from ``column``); files, folders and manifests are listed by ``find`` (names
    only; nothing is opened until it is streamed). One shard per file, so ranks and workers split
    them."""
    import datasets

    parts, listed = [], []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        path = Path(part)
        if is_saved_dataset(path):
            parts.append(_saved_rows(path, column, key))
        else:
            for item in find(part):
                if item.data is not None and not isinstance(item.data, bytes):
                    raise RecipeError(f"data.path: {part}: arrays are read whole; set data.streaming to false")
                listed.append((item.name, item.data))
    if listed:
        features = datasets.Features({"name": datasets.Value("string"), "bytes": datasets.Value("binary")})
        parts.append(datasets.IterableDataset.from_generator(_rows, features=features,
                                                             gen_kwargs={"items": listed}))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _saved_rows(path: Path, column: str, key: str) -> Any:
    """The rows of a ``datasets`` folder's arrow files (the train split of a DatasetDict), one shard
    per file, named as the loaded path names them: the row's file path, or ``folder[index]``."""
    import datasets
    import pyarrow as pa

    files = sorted(str(f) for f in path.rglob("*.arrow"))
    split = [f for f in files if "/train/" in f] or files
    if not split:
        raise RecipeError(f"data.path: {path}: a datasets folder without .arrow files")
    starts, total = [], 0
    for f in split:  # row counts from the batch headers of memory-mapped files: no data is read
        starts.append(total)
        with pa.memory_map(f) as source:
            reader = pa.ipc.open_stream(source)
            names = reader.schema.names
            total += sum(batch.num_rows for batch in reader)
        if column not in names:
            raise RecipeError(f"{key}: {f} has no column {column!r} (columns: {', '.join(names)})")
    features = datasets.Features({"name": datasets.Value("string"), "bytes": datasets.Value("binary")})
    return datasets.IterableDataset.from_generator(
        _arrow_rows, features=features,
        gen_kwargs={"parts": list(zip(split, starts, strict=True)), "folder": str(path), "column": column})


def _arrow_rows(parts: list[tuple[str, int]], folder: str, column: str) -> Iterator[dict[str, Any]]:
    import pyarrow as pa

    for file, start in parts:
        index = start
        with pa.memory_map(file) as source:
            for batch in pa.ipc.open_stream(source):
                for cell in batch.column(column).to_pylist():
                    if isinstance(cell, dict) and cell.get("bytes"):  # Audio / Image rows holding the file
                        yield {"name": f"{folder}[{index}]", "bytes": cell["bytes"]}
                    else:
                        yield {"name": cell.get("path") if isinstance(cell, dict) else str(cell), "bytes": None}
                    index += 1
