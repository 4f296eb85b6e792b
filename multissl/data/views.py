"""Augmented views on the data side, for objectives that compare views of a sample (DINO, iBOT, BYOL,
SimCLR). A modality says how to make its views (a :class:`ViewMaker`); the :class:`ViewCollator`
seeds it per example and batches its views, and masks the global views when asked (iBOT).

Each example draws its views from its own generator, ``example_rng((*seed, 2))``, and its view masks
from ``example_rng((*seed, 3))``: an example's views depend on its seed only, not on the batch it is in
or on the DataLoader worker that makes it, so resume is exact and N ranks see what one rank sees with
the same global batch. (A view maker may break this on purpose and say so: speech mixes each clip with
another one of its batch, as BYOL-A does.)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multissl.data.masking import MaskConfig, sample_mask
from multissl.data.seeds import example_rng

Inputs = dict[str, torch.Tensor]
"""What a modality's local encoder takes (``pixel_values``; ``input_values`` and ``attention_mask``)."""

VIEW_STREAM, VIEW_MASK_STREAM = 2, 3
"""Generator streams of an example: 0 its crop (the dataset), 1 its masks (masking collators), 2 its
views, 3 its view masks."""


class ViewMaker(ABC):
    """Makes a modality's augmented views of a batch of decoded examples."""

    global_views: int
    """Views that come first and that the teacher sees (DINO's global crops); the rest are local."""

    local_views: int = 0
    """Smaller views for the student only (multi-crop)."""

    @abstractmethod
    def __call__(self, examples: list[dict[str, Any]], rngs: list[np.random.Generator]) -> list[Inputs]:
        """The views of ``examples`` (``rngs[i]`` is example i's generator; every random choice about
        example i is drawn from it): one input dict per view, batched over the examples, global views
        first. Each dict is what the modality's local encoder takes."""

    @abstractmethod
    def token_grids(self, inputs: dict[str, torch.Tensor]) -> tuple[int, list[tuple[int, ...]]]:
        """(tokens of the view for the encoder, not counting extra tokens; the grid of each example's
        real tokens), for the view masks: an example's mask covers the first tokens of its grid."""

    @abstractmethod
    def picture(self, inputs: dict[str, torch.Tensor], i: int) -> np.ndarray:
        """What a person looks at for example ``i`` of a view: an RGB image (H, W, 3) in [0, 1], or a
        2-D array (rows, columns) drawn with a colour map, its first row at the bottom (a spectrogram)."""

    def titles(self) -> list[str]:
        """A short name per view, for pictures."""
        return ([f"global {i + 1}" for i in range(self.global_views)]
                + [f"local {i + 1}" for i in range(self.local_views)])


def example_id(seed: tuple[int, ...]) -> int:
    """A number that names an example in every pass, from its seed: its index in a map-style dataset
    (seed ``(seed, pass, index)``); for a streamed one (``(seed, pass, part, row)``) ``part * 2**40 + row``
    (the row itself when one reader streams). Memory banks of past embeddings (PIRL, DeepCluster) key on it.

    >>> example_id((0, 3, 17)), example_id((0, 1, 2, 5)) == 2 * 2**40 + 5
    (17, True)
    """
    return int(seed[-1]) + (int(seed[2]) << 40 if len(seed) > 3 else 0)


class ViewCollator:
    """Batches the views of each example: ``{"views": [inputs of view 0, view 1, ...], "global_views": G,
    "example_ids": (B,) long}`` (the first G views are global; :func:`example_id` of each example) and, with
    a ``mask`` config, ``"view_masks"``: one (B, T) bool tensor per global view, True where masked.

    >>> class Noise(ViewMaker):
    ...     global_views = 2
    ...     def __call__(self, examples, rngs):
    ...         return [{"x": torch.tensor(np.stack([r.normal(size=4) for r in rngs]))} for _ in range(2)]
    ...     def token_grids(self, inputs):
    ...         return 4, [(4,)] * len(inputs["x"])
    ...     def picture(self, inputs, i):
    ...         return inputs["x"][i].numpy()[None]
    >>> b = ViewCollator(Noise(), MaskConfig(kind="random", prob=0.5))([{"seed": (0, 0, 0)}, {"seed": (0, 0, 1)}])
    >>> len(b["views"]), b["views"][0]["x"].shape, b["view_masks"][1].sum(1).tolist()
    (2, torch.Size([2, 4]), [2, 2])
    """

    def __init__(self, maker: ViewMaker, mask: MaskConfig | None = None):
        self.maker, self.mask = maker, mask

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        views = self.maker(examples, [example_rng((*e["seed"], VIEW_STREAM)) for e in examples])
        batch: dict[str, Any] = {"views": views, "global_views": self.maker.global_views,
                                 "example_ids": torch.tensor([example_id(e["seed"]) for e in examples])}
        if "label" in examples[0]:  # the example's label id (data.label_column), for objectives that take labels
            batch["labels"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
        if self.mask is not None:
            rngs = [example_rng((*e["seed"], VIEW_MASK_STREAM)) for e in examples]
            masks = []
            for inputs in views[: self.maker.global_views]:
                tokens, grids = self.maker.token_grids(inputs)
                m = np.zeros((len(examples), tokens), dtype=bool)
                for i, (grid, rng) in enumerate(zip(grids, rngs, strict=True)):
                    if math.prod(grid):
                        m[i, : math.prod(grid)] = sample_mask(self.mask, grid, rng).reshape(-1)
                masks.append(torch.from_numpy(m))
            batch["view_masks"] = masks
        return batch


def save_views_picture(maker: ViewMaker, batch: dict[str, Any], path: str | Path, n: int = 8) -> Path:
    """A PNG grid of a batch's views: a row per example (the first ``n``), a column per view. Local views
    are drawn at their size relative to the global ones, so a person sees the crops as the model does."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = batch["views"]
    rows = min(n, len(next(iter(views[0].values()))))
    pictures = [[maker.picture(v, i) for v in views] for i in range(rows)]
    tallest = max(p.shape[0] for row in pictures for p in row)
    widths = [max(row[c].shape[1] for row in pictures) for c in range(len(views))]
    cell = 1.6  # inches per row
    fig, axes = plt.subplots(rows, len(views), squeeze=False, gridspec_kw={"width_ratios": widths},
                             figsize=(cell * sum(widths) / tallest + 0.2 * len(views), cell * rows))
    for c, title in enumerate(maker.titles()):
        axes[0, c].set_title(title, fontsize=8)
    for r, row in enumerate(pictures):
        for c, p in enumerate(row):
            ax = axes[r, c]
            if p.ndim == 3:
                ax.imshow(np.clip(p, 0, 1), extent=(0, p.shape[1], p.shape[0], 0), interpolation="nearest")
                ax.set_xlim(0, widths[c])
                ax.set_ylim(tallest, 0)
            else:  # a spectrogram: low rows at the bottom
                ax.imshow(p, origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
