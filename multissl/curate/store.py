"""An embeddings folder written by ``multissl embed`` (a ``datasets`` folder with ``embed.json`` beside
it) and the labels given to its items (``labels.csv``, rewritten atomically at every label)."""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from multissl.errors import RecipeError

LABELS = "labels.csv"


class Embeddings:
    """The items and embeddings of ``folder``; vectors are read when first asked for."""

    def __init__(self, folder: str | Path):
        from datasets import load_from_disk

        self.folder = Path(folder)
        settings = self.folder / "embed.json"
        if not settings.is_file() or not (self.folder / "state.json").is_file():
            raise RecipeError(f"{folder}: not an embeddings folder (make one with 'multissl embed EXPORT --data ... "
                              f"--out {folder}'{'; its embed did not finish' if settings.is_file() else ''})")
        self.settings: dict[str, Any] = json.loads(settings.read_text())
        self.dataset = load_from_disk(str(self.folder))
        self.ids: list[str] = self.dataset["id"]
        self.inputs: list[str] = self.dataset["input"]
        self.row_of = {item: row for row, item in enumerate(self.ids)}
        self.dim = int(self.dataset.features["embedding"].length)
        self._vectors: np.ndarray | None = None
        self._data_labels: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def view(self) -> str:
        """How an item is shown: text, image or audio."""
        return self.settings.get("view", "text")

    @property
    def vectors(self) -> np.ndarray:
        """Every embedding, (items, dim) float32."""
        if self._vectors is None:
            self._vectors = np.asarray(self.dataset.with_format("numpy")["embedding"], dtype=np.float32)
        return self._vectors

    def vectors_of(self, rows: list[int]) -> np.ndarray:
        """The embeddings of ``rows`` only (read from disk, not all of them)."""
        if self._vectors is not None:
            return self._vectors[rows]
        return np.asarray(self.dataset.select(rows).with_format("numpy")["embedding"], dtype=np.float32).reshape(
            len(rows), self.dim)

    def rows_of(self, items: list[str], flag: str) -> list[int]:
        """Rows of ``items`` (ids, or the input path of a media item); a one-line error names one that is
        not in the dataset."""
        rows = []
        for item in items:
            row = self.row_of.get(item)
            if row is None and Path(item).exists():
                row = self.row_of.get(str(Path(item).resolve()))
            if row is None:
                raise KeyError(f"{flag} {item}: not an item of {self.folder} ({len(self.ids)} items, ids such as "
                               f"{self.ids[0]!r})")
            rows.append(row)
        return rows

    def record(self, row: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
        """One item as the page and ``search`` show it: id, input, its label in the data and the label given."""
        out = {"id": self.ids[row], "input": self.inputs[row], "data_label": self.data_labels()[row]}
        if labels is not None:
            out["label"] = labels.get(self.ids[row])
        return out

    def data_labels(self) -> list[str | None]:
        """Every item's label in the data (None where it has none)."""
        if self._data_labels is None:
            names = self.dataset.column_names
            self._data_labels = self.dataset["label"] if "label" in names else [None] * len(self)
        return self._data_labels


class LabelStore:
    """Labels given to items, one row each in ``labels.csv`` (id, input, label). Every change rewrites
    the file under a temporary name, syncs it and renames it over the old one, so a kill at any moment
    leaves either the old or the new file, never a torn one."""

    def __init__(self, emb: Embeddings, path: str | Path | None = None):
        self.emb, self.path = emb, Path(path) if path else emb.folder / LABELS
        self.lock = threading.Lock()
        self.labels: dict[str, str] = {}
        if self.path.is_file():
            self.labels = read_labels(self.path, emb)

    def set(self, item: str, label: str | None) -> None:
        """Give ``item`` the label ``label`` (None or "": remove its label), written to disk before returning."""
        row = self.emb.rows_of([item], "label:")[0]
        with self.lock:
            item = self.emb.ids[row]
            if label:
                self.labels[item] = str(label)
            else:
                self.labels.pop(item, None)
            self._write()

    def _write(self) -> None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "input", "label"])
        for item, label in self.labels.items():
            w.writerow([item, self.emb.inputs[self.emb.row_of[item]], label])
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def export(self, out: str | Path) -> Path:
        """The labels as a CSV file (``out`` ends in .csv: input, label, id; what ``multissl probe --data
        FILE --input-column input`` reads) or a ``datasets`` folder (input, label as a ClassLabel, id) for
        fine-tuning."""
        out = Path(out)
        rows = [(self.emb.inputs[self.emb.row_of[i]], label, i) for i, label in self.labels.items()]
        if not rows:
            raise RecipeError(f"{self.emb.folder}: no labels to export yet")
        if out.suffix.lower() == ".csv":
            with open(out, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["input", "label", "id"])
                w.writerows(rows)
            return out
        from datasets import Dataset

        ds = Dataset.from_dict({"input": [r[0] for r in rows], "label": [r[1] for r in rows],
                                "id": [r[2] for r in rows]}).class_encode_column("label")
        ds.save_to_disk(str(out))
        return out


def read_labels(path: str | Path, emb: Embeddings) -> dict[str, str]:
    """{id: label} from a CSV with ``label`` and ``id`` (or ``input``) columns, such as ``labels.csv`` or an
    export; a row naming an item that is not in ``emb`` is a one-line error."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        key = "id" if "id" in cols else "input" if "input" in cols else None
        if key is None or "label" not in cols:
            raise RecipeError(f"--labels {path}: needs an id (or input) column and a label column (has "
                              f"{', '.join(cols) or 'none'})")
        out = {}
        by_input = dict(zip(emb.inputs, emb.ids, strict=True)) if key == "input" else None
        for row in reader:
            item = row[key] if by_input is None else by_input.get(row[key], row[key])
            out[emb.ids[emb.rows_of([item], f'--labels {path}:')[0]]] = row["label"]
        return out
