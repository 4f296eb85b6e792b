"""Sentence views for objectives that compare views of a text (SimCSE, SupCon on text): one sentence
per example instead of packed blocks. Each row of the data is tokenised on its own (with the
tokenizer's special tokens, as ``AutoTokenizer`` and sentence-transformers encode it), truncated to
``adapter.max_length``, and padded per batch.

Unsupervised views (Gao et al. 2021, SimCSE section 3) are the same sentence ``copies`` times: they
differ only by the encoder's dropout, which draws a new mask for each. Supervised views come from
columns of a table (JSON lines, CSV, parquet): an anchor, its positive, and optionally hard negatives
(SimCSE section 4: the entailment and contradiction hypotheses of an NLI premise).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from multissl.data.config import DataConfig
from multissl.data.labels import label_id, missing_label
from multissl.data.seeds import SeededDataset
from multissl.data.streams import SeededStream
from multissl.data.views import Inputs, ViewMaker
from multissl.errors import RecipeError

if TYPE_CHECKING:  # the model module names TextViews as the adapter's views config
    from multissl.modalities.text.model import TextConfig

log = logging.getLogger(__name__)


@dataclass
class TextViews:
    """The recipe's ``views`` section for text: one sentence per example, as dropout copies or columns."""

    copies: int = 2
    """Unsupervised views: each sentence (``data.text_column``; a line of a text file) this many
    times; they differ by the encoder's dropout only. Not used with ``columns``."""

    columns: list[str] = field(default_factory=list)
    """Supervised views: the table column of each view, in order: the anchor, its positive, then any
    hard negatives (e.g. ``[sent0, sent1, hard_neg]``). Empty: ``copies`` of ``data.text_column``."""

    def validate(self, where: str = "views") -> None:
        if self.copies < 1:
            raise ValueError(f"{where}.copies must be >= 1, got {self.copies}")
        if len(self.columns) == 1:
            raise ValueError(f"{where}.columns needs 2 columns or more (anchor, positive, hard negatives), got "
                             f"{self.columns}; leave it empty for dropout copies of data.text_column")

    def count(self) -> int:
        """Views per example."""
        return len(self.columns) or self.copies


def _columns(data: DataConfig, views: TextViews) -> list[tuple[str, str]]:
    """(column, the recipe key that names it) of each view's text."""
    return [(c, "views.columns") for c in views.columns] or [(data.text_column, "data.text_column")]


def _read(data: DataConfig, wanted: list[tuple[str, str]]):
    """The rows of ``data.path`` with the ``wanted`` columns, as a ``datasets`` Dataset (or
    IterableDataset when streaming); a missing column is a one-line error naming its key."""
    import datasets

    from multissl.modalities.text.data import resolve_files

    builder, files = resolve_files(data.path, data.format)
    files = [f for f in files if Path(f).stat().st_size > 0] or files
    kwargs: dict[str, Any] = {"encoding_errors": "replace"} if builder == "text" else {}
    if builder == "text":  # plain text has one column, a line each
        others = [(c, key) for c, key in wanted if key != "data.text_column"]
        if others:
            raise RecipeError(f"{others[0][1]}: {files[0]} is plain text, without columns; use a JSON lines, CSV or "
                              f"parquet file with a column {others[0][0]!r}")
        wanted = [("text", "data.text_column")]
    try:
        ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=data.streaming, **kwargs)
        columns = ds.column_names if ds.column_names is not None else list(next(iter(ds), {}))
    except Exception as e:  # datasets wraps parse errors in several types
        raise RecipeError(f"data.path: could not read {', '.join(files[:3])}: {str(e).splitlines()[0][:200]}") from None
    for column, key in wanted:
        if column not in columns:
            raise RecipeError(f"{key}: no column {column!r} in {files[0]} (columns: {', '.join(map(str, columns))})")
    return ds.select_columns(list(dict.fromkeys(c for c, _ in wanted))), [c for c, _ in wanted]


def build_sentence_dataset(data: DataConfig, tokenizer, text: TextConfig, views: TextViews, seed: int):
    """One example per row: ``views_ids`` (the token ids of each view column; one list for dropout
    copies) and, with ``data.label_column``, ``label`` (its id). Rows with a blank view text or no
    label are skipped (and counted, when the data is loaded)."""
    wanted = _columns(data, views)
    label = data.label_column
    if label:
        wanted.append((label, "data.label_column"))
    ds, names = _read(data, wanted)
    text_columns = names[: len(names) - bool(label)]
    if label:  # read under a name of its own: the output's integer "label" must not take the column's type
        if label in text_columns:
            raise RecipeError(f"data.label_column: {label!r} is also a column of the views' text")
        ds = ds.rename_column(label, "_label_source")
        label = "_label_source"
        names = [*text_columns, label]

    def tokenise(batch: dict[str, list]) -> dict[str, list]:
        rows = range(len(batch[text_columns[0]]))
        keep = [i for i in rows if all(isinstance(batch[c][i], str) and batch[c][i].strip() for c in text_columns)
                and not (label and missing_label(batch[label][i]))]
        ids = [tokenizer([batch[c][i] for i in keep], truncation=True, max_length=text.max_length)["input_ids"]
               for c in text_columns] if keep else [[] for _ in text_columns]
        out: dict[str, list] = {"views_ids": [list(v) for v in zip(*ids, strict=True)]}
        if label:
            out["label"] = [label_id(batch[label][i]) for i in keep]
        return out

    drop = list(dict.fromkeys(names))
    if data.streaming:
        return SeededStream(ds.map(tokenise, batched=True, batch_size=1000, remove_columns=drop), seed,
                            shuffle_buffer=data.shuffle_buffer)
    rows = len(ds)
    ds = ds.map(tokenise, batched=True, batch_size=1000, remove_columns=drop, desc="tokenising sentences")
    if len(ds) == 0:
        raise RecipeError(f"data.path: {data.path}: no row with text in {', '.join(text_columns)}"
                          + (f" and a label in {label}" if label else ""))
    if len(ds) < rows:
        log.warning("data: %d of %d rows skipped (blank text%s)", rows - len(ds), rows,
                    " or no label" if label else "")
    return SeededDataset(ds, seed)


class SentenceViews(ViewMaker):
    """Views of tokenised sentences (examples hold ``views_ids``): each view is ``{"input_ids": (B, T)}``,
    padded with ``adapter.pad_token_id`` to the batch's longest sentence of that view.

    >>> from multissl.modalities.text.model import TextConfig
    >>> maker = SentenceViews(TextViews(copies=2), TextConfig(max_length=8, pad_token_id=1))
    >>> views = maker([{"views_ids": [[0, 5, 2]]}, {"views_ids": [[0, 2]]}], [None, None])
    >>> len(views), views[1]["input_ids"].tolist()
    (2, [[0, 5, 2], [0, 2, 1]])
    """

    def __init__(self, views: TextViews, cfg: TextConfig):
        self.views, self.cfg = views, cfg
        self.global_views = views.count()

    def __call__(self, examples: list[dict[str, Any]], rngs: list[np.random.Generator]) -> list[Inputs]:
        out = []
        for v in range(self.global_views):
            rows = [e["views_ids"][min(v, len(e["views_ids"]) - 1)] for e in examples]  # copies: the one sentence
            ids = np.full((len(rows), max(len(r) for r in rows)), self.cfg.pad_token_id, dtype=np.int64)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = r
            out.append({"input_ids": torch.from_numpy(ids)})
        return out

    def token_grids(self, inputs: dict[str, torch.Tensor]) -> tuple[int, list[tuple[int, ...]]]:
        ids = inputs["input_ids"]
        return ids.shape[1], [(int(n),) for n in ids.ne(self.cfg.pad_token_id).sum(1)]

    def picture(self, inputs: dict[str, torch.Tensor], i: int) -> np.ndarray:
        """The view's tokens as a square of coloured cells, row by row (a colour per token id, padding
        black): shows the lengths, and where views differ."""
        ids = inputs["input_ids"][i].numpy()
        side = int(np.ceil(np.sqrt(len(ids))))
        colours = (ids[:, None] * np.array([0.618, 0.414, 0.732]) + 0.1) % 0.8 + 0.2  # golden-ratio hues
        colours[ids == self.cfg.pad_token_id] = 0.0
        cells = np.zeros((side * side, 3))
        cells[: len(ids)] = colours
        return cells.reshape(side, side, 3)

    def titles(self) -> list[str]:
        return [f"view {i + 1}" for i in range(self.global_views)]
