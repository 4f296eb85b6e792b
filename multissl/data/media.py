"""The skeleton every media modality (speech, images) shares: find files (folders, ``datasets``
folders, single files, the modality's own list formats), check them, wrap the usable ones in a
dataset that decodes on demand, or stream them and check each as it comes. A modality says only
what differs: its extensions, what one item is, how to check and decode it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from multissl.data.config import DataConfig
from multissl.data.saved_datasets import is_saved_dataset, media_column
from multissl.data.seeds import example_rng
from multissl.data.skipping import first_decodable, made_or_skipped, warn_skipped, warn_unrecognised
from multissl.data.streams import SeededStream, media_stream
from multissl.errors import RecipeError

Check = Callable[[Any], tuple[Any | None, str]]
"""item -> (the usable item, with what checking learnt, and ""), or (None, why it cannot be used)."""


@dataclass(frozen=True)
class MediaFiles:
    """What a media modality's files are."""

    what: str
    """Its name in warnings ("audio", "vision")."""

    label: str
    """What its files are called in errors ("audio files", "images")."""

    noun: str
    """What skip counts count ("files", "images")."""

    extensions: tuple[str, ...]
    """File extensions read from folders (lower case)."""

    column_key: str
    """The recipe key naming the media column of ``datasets`` folders (``data.audio_column``)."""

    item: Callable[[str, Any], Any]
    """(name, encoded bytes or None) -> one item; it has ``name`` and ``data``."""

    error: type[Exception]
    """Raised for an unusable file when ``data.strict`` is set."""

    listing: Callable[[Path, str], list[Any] | None] = lambda path, column: None
    """A file that lists items (manifests, arrays): its items, or None when it is a media file itself."""

    def find(self, spec: str, column: str) -> list[Any]:
        """The items named by ``spec``: media files, folders (recursive), ``datasets`` folders saved with
        ``save_to_disk``, and the modality's listing files; several separated by commas."""
        items: list[Any] = []
        for part in [p.strip() for p in spec.split(",") if p.strip()]:
            p = Path(part)
            if is_saved_dataset(p):
                items += [self.item(name, data) for name, data in media_column(p, column, self.column_key)]
            elif p.is_dir():
                found = [f for f in sorted(p.rglob("*")) if f.is_file()]
                items += [self.item(str(f), None) for f in found if f.suffix.lower() in self.extensions]
                warn_unrecognised(p, [f for f in found if f.suffix.lower() not in self.extensions], self.extensions)
            elif p.is_file():
                listed = self.listing(p, column)
                items += listed if listed is not None else [self.item(str(p), None)]
            else:
                raise RecipeError(f"data.path: {part}: no such file or folder")
        if not items:
            raise RecipeError(f"data.path: {spec}: no {self.label} ({', '.join(self.extensions)}) found")
        return items

    def scan(self, items: list[Any], check: Check, strict: bool = False) -> tuple[list[Any], list[tuple[str, str]]]:
        """(usable items, [(name, problem)]); ``strict`` raises at the first problem."""
        good, bad = [], []
        for item in items:
            ok, why = check(item)
            if ok is None:
                if strict:
                    raise self.error(f"{item.name}: {why} (data.strict is set)")
                bad.append((item.name, why))
            else:
                good.append(ok)
        return good, bad


class MediaDataset(torch.utils.data.Dataset):
    """Checked items decoded on demand, each example seeded by (seed, epoch, index). An item that
    fails to decode now (it passed the scan) is replaced by the next one and counted in ``failed``.
    Subclasses name the example's ``key`` and decode in ``load``."""

    key: ClassVar[str]
    files: ClassVar[MediaFiles]

    def __init__(self, items: list[Any], seed: int, strict: bool = False):
        self.items, self.seed, self.strict, self.epoch = items, seed, strict, 0
        self.names = [item.name for item in items]
        self.failed: list[str] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int, rng: np.random.Generator | None = None) -> Any:
        """Item ``i`` as the model sees it (random crops drawn from ``rng`` when given)."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, Any]:
        seed = (self.seed, self.epoch, int(i))
        x = first_decodable(self.names, i, lambda j: self.load(j, example_rng(seed)), self.strict, self.failed,
                            self.files.what, self.files.error)
        return {self.key: x, "seed": seed}


def _stream_example(row: dict[str, Any], seed: tuple[int, ...], files: MediaFiles, make: Callable, strict: bool):
    return made_or_skipped(row["name"], lambda: make(files.item(row["name"], row["bytes"]), example_rng(seed)),
                           strict, files.what, files.error)


def build_media_dataset(data: DataConfig, column: str, files: MediaFiles, check: Check,
                        dataset: Callable[[list[Any]], MediaDataset], make: Callable[[Any, np.random.Generator], dict],
                        seed: int) -> MediaDataset | SeededStream:
    """Find, check and wrap the files of ``data.path``; bad files are counted and named. With
    ``data.streaming`` nothing is scanned up front: ``make(item, rng)`` checks and decodes each
    streamed item into an example (raising for an unusable one, which is skipped and named)."""
    if data.streaming:
        rows = media_stream(data.path, column, files.column_key, lambda part: files.find(part, column))
        return SeededStream(rows, seed, partial(_stream_example, files=files, make=make, strict=data.strict),
                            data.shuffle_buffer)
    good, bad = files.scan(files.find(data.path, column), check, data.strict)
    warn_skipped(bad, len(good), data.path, files.what, files.noun)
    return dataset(good)
