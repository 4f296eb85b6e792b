"""The items of ``--data`` for an encoder of any modality, in a fixed order: (id, input, label).

An item's input is what the modality's probe features read (a file path for speech and images, the text
itself for text); its id names it on the command line and in label files (the path, or ``FILE:ROW`` for a
row of a table). Labels come from the data where it has them: a label column, or class sub-folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from multissl.data.saved_datasets import is_saved_dataset
from multissl.data.skipping import warn_unrecognised
from multissl.errors import RecipeError

TABLES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


@dataclass(frozen=True)
class Item:
    """One item of the data."""

    id: str
    """Its name: a file's path, or ``FILE:ROW`` (1-based) for a row of a table or text file."""

    input: str
    """What the encoder reads: a file path (speech, images) or the text."""

    label: str | None = None
    """Its label in the data (a label column or a class sub-folder); None when the data has none."""


def _table(path: Path, input_column: str, label_column: str):
    import pandas as pd

    name = path.name.removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        df = pd.read_json(path, lines=name.endswith(".jsonl"))
    elif name.endswith((".csv", ".tsv")):
        df = pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",", keep_default_na=False)
    else:
        df = pd.read_parquet(path)
    if input_column not in df.columns:
        raise RecipeError(f"--data: {path}: no column {input_column!r} (columns: {', '.join(map(str, df.columns))}; "
                          "--input-column names it)")
    labels = df[label_column].tolist() if label_column in df.columns else [None] * len(df)
    return df[input_column].tolist(), labels


def _as_label(value) -> str | None:
    return None if value is None or (isinstance(value, float) and value != value) else str(value)


def _resolve(value, folder: Path, is_media: bool) -> str:
    """A media path relative to its table's folder is read from there."""
    text = "" if value is None else str(value)
    if is_media and text and not Path(text).is_absolute() and (folder / text).exists():
        return str((folder / text).resolve())
    return text


def list_items(data: str, extensions: tuple[str, ...], input_column: str = "", label_column: str = "label"
               ) -> list[Item]:
    """The items of ``data`` (several parts separated by commas), for an encoder that reads files with
    ``extensions`` (empty: it reads text). Parts: a folder (media files searched recursively; a file in
    a sub-folder is labelled with the sub-folder's name), a table (``.jsonl``, ``.json``, ``.csv``,
    ``.tsv``, ``.parquet``, optionally ``.gz``: ``input_column`` holds paths or texts, ``label_column``
    labels where present), a ``datasets`` folder saved with ``save_to_disk`` (the same columns), a
    media file, or for text a plain ``.txt`` file (one item per non-empty line).

    >>> [i.id for i in list_items("photos/", (".png",))]  # doctest: +SKIP
    ['photos/cat/1.png', 'photos/dog/2.png']
    """
    is_media = bool(extensions)
    what = "files with the extensions " + " ".join(extensions) if is_media else "text"
    column = input_column or ("path" if is_media else "text")
    items: list[Item] = []
    for part in [p.strip() for p in data.split(",") if p.strip()]:
        p = Path(part)
        if is_saved_dataset(p):
            from datasets import load_from_disk

            ds = load_from_disk(str(p))
            if column not in ds.column_names:
                raise RecipeError(f"--data: {p}: no column {column!r} (columns: {', '.join(ds.column_names)}; "
                                  "--input-column names it)")
            labels = ds[label_column] if label_column in ds.column_names else [None] * len(ds)
            items += [Item(f"{p}:{i + 1}" if not is_media else _resolve(v, p, True), _resolve(v, p, is_media),
                           _as_label(lab)) for i, (v, lab) in enumerate(zip(ds[column], labels, strict=True))]
        elif p.is_dir():
            if not is_media:
                raise RecipeError(f"--data: {p}: a text encoder reads tables ({' '.join(TABLES)}), .txt files or "
                                  "datasets folders, not a folder of files")
            root = p.resolve()
            found = [f for f in sorted(root.rglob("*")) if f.is_file()]
            items += [Item(str(f), str(f), f.parent.name if f.parent != root else None)
                      for f in found if f.suffix.lower() in extensions]
            warn_unrecognised(root, [f for f in found if f.suffix.lower() not in extensions], extensions)
        elif p.is_file():
            name = p.name.lower().removesuffix(".gz")
            if name.endswith(TABLES):
                inputs, labels = _table(p, column, label_column)
                folder = p.resolve().parent
                items += [Item(_resolve(v, folder, True) if is_media else f"{p}:{i + 1}", _resolve(v, folder, is_media),
                               _as_label(lab)) for i, (v, lab) in enumerate(zip(inputs, labels, strict=True))]
            elif not is_media and name.endswith(".txt"):
                lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
                items += [Item(f"{p}:{i + 1}", line) for i, line in enumerate(lines) if line.strip()]
            elif is_media and p.suffix.lower() in extensions:
                items.append(Item(str(p.resolve()), str(p.resolve())))
            else:
                raise RecipeError(f"--data: {p}: this encoder reads {what}, tables or datasets folders; "
                                  f"{p.suffix or 'no extension'} is none of them")
        else:
            raise RecipeError(f"--data: {part}: no such file or folder")
    if is_media:
        usable = [i for i in items if Path(i.input).suffix.lower() in extensions]
        if items and not usable:  # e.g. recordings for an image encoder
            raise RecipeError(f"--data: {data}: none of its {len(items)} items is one of this encoder's "
                              f"{what} (is the export of another modality?)")
    if not items:
        raise RecipeError(f"--data: {data}: no items ({what}) found")
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise RecipeError(f"--data: {item.id} is listed twice")
        seen.add(item.id)
    return items
