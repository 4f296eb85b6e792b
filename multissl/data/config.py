"""The recipe's ``data`` section: where the unlabelled data is and how it is read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from multissl.errors import RecipeError


@dataclass
class DataConfig:
    """Where the unlabelled data is and how it is read."""

    path: str = ""
    """A file, a folder (read recursively) or a glob; several separated by commas. Also ``--data``."""

    format: Literal["auto", "text", "json", "parquet", "csv"] = "auto"
    """File format; auto goes by extension (.txt, .jsonl/.json, .parquet; .csv when a file is named)."""

    text_column: str = "text"
    """Column holding the text in JSON lines, CSV and parquet files."""

    streaming: bool = False
    """Stream the data instead of loading or scanning it first (corpora larger than memory, millions
    of files): read in endless passes, split across ranks and DataLoader workers by file; bad files
    are skipped as they come. Resume is exact (the stream is replayed to where the checkpoint was)."""

    shuffle_buffer: int = 1000
    """Streams: examples are shuffled within a buffer of this many (and the file order each pass),
    seeded; 0 keeps the order."""

    tokenizer: str = ""
    """Folder of a tokenizer that ``AutoTokenizer`` loads (``multissl tokenizer train``). Also ``--tokenizer``."""

    num_workers: int = 0
    """DataLoader worker processes (masks are made there)."""

    audio_column: str = "audio"
    """Column holding the audio (path or encoded bytes) in manifests and ``datasets`` folders."""

    image_column: str = "image"
    """Column holding the image (path or encoded bytes) in ``datasets`` folders."""

    label_column: str = ""
    """Column holding each example's label, for objectives that train on labels (SupCon): in text
    tables (JSON lines, CSV, parquet), and in image tables (CSV, JSON lines, parquet, with the image's
    path in ``image_column``) and ``datasets`` folders. Also ``--label-column``. Empty: no labels."""

    strict: bool = False
    """Stop at the first unusable file (unreadable, empty, too short) instead of skipping it with a
    warning. Also ``--strict``."""

    def validate(self, where: str = "data") -> None:
        for key in ("num_workers", "shuffle_buffer"):
            if getattr(self, key) < 0:
                raise RecipeError(f"{where}.{key} must be >= 0, got {getattr(self, key)}")
