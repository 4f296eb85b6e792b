"""Media columns of ``datasets`` folders (written by ``save_to_disk``), read without decoding: the
project decodes audio with soundfile and images with Pillow itself."""

from __future__ import annotations

from pathlib import Path

from multissl.errors import RecipeError


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())


def media_column(path: Path, column: str, key: str) -> list[tuple[str, bytes | None]]:
    """(name, encoded bytes or None) per row of ``column`` (the train split of a DatasetDict); the name
    is the row's file path, or ``folder[row]`` when the row holds bytes. ``key`` names the recipe key
    in errors (data.audio_column, data.image_column)."""
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if column not in ds.column_names:
        raise RecipeError(f"{key}: {path} has no column {column!r} (columns: {', '.join(ds.column_names)})")
    feature = ds.features[column]
    if isinstance(feature, datasets.Audio | datasets.Image):
        ds = ds.cast_column(column, type(feature)(decode=False))
    rows: list[tuple[str, bytes | None]] = []
    for i, row in enumerate(ds[column]):
        if isinstance(row, dict) and row.get("bytes"):
            rows.append((f"{path}[{i}]", row["bytes"]))
        else:
            rows.append((row["path"] if isinstance(row, dict) else str(row), None))
    return rows
