"""PIRL (Misra & van der Maaten 2019, "Self-Supervised Learning of Pretext-Invariant Representations",
arXiv 1912.01991): the representation of an image must not change when the image is cut into a jigsaw
puzzle. One view of each image goes through the encoder and a linear head f; a second view is cut into
n x n tiles (a random crop of each cell of the grid, so the tiles do not meet), each tile goes through
the encoder on its own and a linear head, and a linear head g maps the tiles' features, concatenated in
a random order, to the jigsaw's representation. Both are pulled towards the image's entry in a memory
bank of earlier image representations and contrasted, by noise-contrastive estimation, with the entries
of other images drawn at random from the bank (:func:`multissl.core.losses.pirl.pirl_loss`, eq. 5:
``lambda L(m_I, g(v_It)) + (1 - lambda) L(m_I, f(v_I))``); the bank entry then moves towards f(v_I)
(:func:`multissl.core.losses.pirl.pirl_memory_update`). No teacher. As the memory-bank NCE PIRL builds on
(Wu et al. 2018) and the authors' code, the NCE scores a pair by ``exp(s / tau) / Z`` with the partition
function Z estimated on the first training batch and then kept (``estimate_partition``).

The jigsaw is made here, from a view's pixels: the modality's patch grid (``patch_grid()``) gives the
channels and the patch, and a tile is a whole number of patches, so the encoder takes each tile as a
small image (a ViT resizes its positions to the tile's grid). Objectives need no modality name: a
modality without a patch grid (speech, text) cannot be cut into a jigsaw, and the method says so.

The bank has a row per sample, keyed by the view collator's ``example_ids`` (a map-style data set's
indices), ``memory_size`` rows at least; its rows start as random unit vectors, as in the memory bank
PIRL builds on (Wu et al. 2018). Negatives are drawn uniformly from the rows up to the largest id seen
so far (|D| in the noise term is their count: the data set's size once every sample has been seen),
never the sample's own row.

Data parallelism and resume: the jigsaw permutations, the tile crops and the negatives of the global
batch are drawn by a generator seeded with the count of training batches (a buffer), and each rank
takes its own samples' rows, so N ranks draw what one rank with the global batch draws; the bank is
updated with the global batch's representations (gathered), so it is the same on every rank, and Z is
averaged over the ranks. The bank, Z and the counters are buffers saved in checkpoints, so resume is
exact.

>>> model = PIRL(vision_adapter, EncoderConfig(), PIRLConfig(memory_size=2048))  # doctest: +SKIP
>>> model(**view_collator(examples))["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from multissl.core.adapter import Modality, PatchGrid, StudentView
from multissl.core.blocks import EncoderConfig
from multissl.core.distributed import all_gather_rows, global_mean, rows_before
from multissl.core.heads import pool
from multissl.core.health import compute_var, effective_rank
from multissl.core.init import bert_init
from multissl.core.losses.pirl import pirl_loss, pirl_memory_update, pirl_normaliser
from multissl.methods.base import Method
from multissl.methods.siamese import (
    check_batch_views,
    check_view_counts,
    count_batch,
    encode_views,
    finite,
    global_average,
    mean_cosine,
)

TILE_SHARE = 0.75
"""The default tile side as a share of its cell's side (the paper: 64-pixel crops of 85-pixel cells)."""


@dataclass
class PIRLConfig:
    """PIRL: an image's representation and its jigsaw's pulled to the image's memory-bank entry, contrasted
    with other images' entries by NCE."""

    name: Literal["pirl"] = "pirl"
    """The objective."""

    pool: Literal["cls", "mean"] = "cls"
    """What the heads see of an image or a tile: the encoder's first extra token (cls) or the mean over
    its tokens."""

    dim: int = 128
    """Width of f, of each tile's head and of g: the representations compared (the paper: 128)."""

    tiles: int = 3
    """The jigsaw cuts a view into ``tiles`` x ``tiles`` cells (the paper: 3 x 3)."""

    tile_size: int = 0
    """Side of a tile in pixels, a random crop of its cell, a multiple of the patch; 0: the largest multiple
    of the patch within 3/4 of a cell's side (the paper: 64 of 85), at least one patch."""

    memory_size: int = 1281167
    """Rows of the memory bank: at least the number of samples (an example id must be below it; the paper:
    the 1,281,167 images of ImageNet-1k)."""

    negatives: int = 32000
    """Negatives drawn from the bank per sample (the paper: 32,000)."""

    temperature: float = 0.07
    """tau of the similarity ``exp(s / tau)`` (the paper: 0.07)."""

    weight: float = 0.5
    """lambda, the weight of the jigsaw's term; the image's term has ``1 - lambda`` (the paper: 0.5)."""

    memory_momentum: float = 0.5
    """A bank entry becomes ``normalize(m * entry + (1 - m) * normalize(f))`` (the paper: 0.5)."""

    estimate_partition: bool = True
    """Score a pair by ``exp(s / tau) / Z``, Z estimated as ``|D| mean exp(s / tau)`` over the first
    training batch's pairs and kept (Wu et al. 2018; the authors' code); False: Z = 1, eq. 3 as printed,
    under which every pair with a positive similarity already counts as a match."""

    def validate(self, where: str = "method") -> None:
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"{where}.pool must be cls or mean, got {self.pool!r}")
        if self.tiles < 2:
            raise ValueError(f"{where}.tiles must be >= 2 (a jigsaw of one tile is the image), got {self.tiles}")
        for key in ("dim", "memory_size", "negatives"):
            if getattr(self, key) < 1:
                raise ValueError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")
        if self.tile_size < 0:
            raise ValueError(f"{where}.tile_size must be >= 0 (0: the default), got {self.tile_size}")
        if self.memory_size < 2:
            raise ValueError(f"{where}.memory_size must be >= 2 (negatives are other samples' rows)")
        if not self.temperature > 0:
            raise ValueError(f"{where}.temperature must be > 0, got {self.temperature}")
        for key in ("weight", "memory_momentum"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{where}.{key} must lie in [0, 1], got {getattr(self, key)}")


class PIRL(Method):
    """The encoder, the heads f (``image_head``), per tile (``tile_head``) and g (``jigsaw_head``), and the
    memory bank (buffers ``memory`` and ``memory_rows``, the rows up to the largest id seen). ``forward(views,
    example_ids)`` takes the view collator's batch of two views (the image, the jigsaw's source) and
    returns the loss and the health metrics: ``pred_var`` (per-dimension spread over the batch of the
    normalised image representations), ``student_rank`` (RankMe of the pooled encoder outputs of the
    images) and ``jigsaw_cos`` (mean cosine similarity of each image's and its jigsaw's representations)."""

    name = "pirl"
    config_class = PIRLConfig

    @classmethod
    def student_view(cls, cfg: PIRLConfig) -> StudentView:
        return StudentView(dense=False, views=True)

    @classmethod
    def check_views(cls, cfg: PIRLConfig, views: Any) -> None:
        check_view_counts(cls.name, views)

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: PIRLConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        grid = modality.patch_grid()
        if grid is None:
            raise ValueError("method pirl cuts image views into jigsaw tiles: this modality has no patch grid")
        if cfg.tile_size % grid.patch:
            raise ValueError(f"method.tile_size ({cfg.tile_size}) must be a multiple of the patch ({grid.patch} px)")
        self.grid: PatchGrid = grid
        self.image_head = nn.Linear(encoder.dim, cfg.dim)
        self.tile_head = nn.Linear(encoder.dim, cfg.dim)
        self.jigsaw_head = nn.Linear(cfg.tiles * cfg.tiles * cfg.dim, cfg.dim)
        for head in (self.image_head, self.tile_head, self.jigsaw_head):
            head.apply(bert_init)
        self.register_buffer("memory", F.normalize(torch.randn(cfg.memory_size, cfg.dim), dim=1))
        self.register_buffer("memory_rows", torch.zeros((), dtype=torch.long))
        # Z / |D|, 0 until the first training batch estimates it
        self.register_buffer("normaliser", torch.zeros(()))
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))

    def pixels(self, inputs: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
        """The view's image tensor (B, C, H, W): its only entry, with the patch grid's channels."""
        found = [(k, v) for k, v in inputs.items() if v.ndim == 4 and v.shape[1] == self.grid.channels]
        if len(found) != 1 or len(inputs) != 1:
            raise ValueError(f"method pirl: a view must hold one image tensor (B, {self.grid.channels}, H, W) to "
                             f"cut into tiles, got {sorted(inputs)}")
        return found[0]

    def tile_side(self, cell: int) -> int:
        """A tile's side in pixels for cells of ``cell`` pixels."""
        patch = self.grid.patch
        side = self.cfg.tile_size or max(patch, int(TILE_SHARE * cell) // patch * patch)
        if side > cell:
            raise ValueError(f"method.tile_size: a tile of {side} px does not fit a jigsaw cell of {cell} px "
                             f"(the view cut into {self.cfg.tiles} x {self.cfg.tiles})")
        return side

    def jigsaw(self, images: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """The tiles of ``images`` (B, C, H, W), (B * n * n, C, t, t): tile k of image b is a t x t crop of
        its cell ``order[b, k]`` (cells in row-major order), at ``offsets[b, k]`` (top, left) pixels from
        the cell's corner."""
        b, n = images.shape[0], self.cfg.tiles
        cell_h, cell_w = images.shape[2] // n, images.shape[3] // n
        t = self.tile_side(min(cell_h, cell_w))
        cells = order.to(images.device)
        top = (cells // n) * cell_h + offsets[..., 0].to(images.device)  # (B, n * n)
        left = (cells % n) * cell_w + offsets[..., 1].to(images.device)
        span = torch.arange(t, device=images.device)
        rows, cols = top[..., None] + span, left[..., None] + span  # (B, n * n, t)
        batch = torch.arange(b, device=images.device)[:, None, None, None]
        tiles = images.permute(0, 2, 3, 1)[batch, rows[..., :, None], cols[..., None, :]]  # (B, n * n, t, t, C)
        return tiles.permute(0, 1, 4, 2, 3).reshape(b * n * n, images.shape[1], t, t)

    def draws(self, step: int, before: int, b: int, total: int, rows: int, cell: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tile order (b, n * n), tile offsets (b, n * n, 2), negatives (b, N) in [0, rows - 1)) of this rank's
        samples: rows ``before`` to ``before + b`` of the draws for the ``total`` samples of the global batch,
        from a generator seeded with the batch count."""
        n, negatives = self.cfg.tiles * self.cfg.tiles, self.cfg.negatives
        generator = torch.Generator(device=device).manual_seed(step)
        order = torch.rand(total, n, generator=generator, device=device).argsort(dim=1)
        slack = cell - self.tile_side(cell) + 1
        offsets = torch.randint(0, slack, (total, n, 2), generator=generator, device=device)
        drawn = torch.randint(0, rows - 1, (total, negatives), generator=generator, device=device)
        mine = slice(before, before + b)
        return order[mine], offsets[mine], drawn[mine]

    def forward(self, views: list[dict[str, torch.Tensor]], global_views: int = 2,
                example_ids: torch.Tensor | None = None, **_: object) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        b = check_batch_views(self.name, views, global_views)
        if example_ids is None:
            raise ValueError("method pirl keys its memory bank on the batch's example_ids (the view collator's)")
        ids = example_ids.to(self.memory.device)
        all_ids = all_gather_rows(ids)
        if int(all_ids.max()) >= cfg.memory_size or int(all_ids.min()) < 0:
            raise ValueError(f"method.memory_size ({cfg.memory_size}) must exceed every example id (got "
                             f"{int(all_ids.max())}): the memory bank needs a row per sample (streamed data "
                             "from several readers has sparse ids)")
        step = count_batch(self.batches_seen, self.training)
        rows = max(int(self.memory_rows), int(all_ids.max()) + 1)
        if rows < 2:
            raise ValueError("method pirl: the memory bank needs two samples or more (negatives are other samples)")

        key, images = self.pixels(views[1])
        n = cfg.tiles
        cell = min(images.shape[2], images.shape[3]) // n
        order, offsets, drawn = self.draws(step, rows_before(b, ids.device), b, int(all_ids.shape[0]), rows, cell,
                                           ids.device)
        negative_ids = drawn + (drawn >= ids[:, None]).long()  # uniform over the other rows

        (h,) = encode_views(self.encoder, views[:1], cfg.pool)
        f = self.image_head(h)
        tx, tpad = self.encoder.encode({key: self.jigsaw(images, order, offsets)})
        tiles = self.tile_head(pool(tx, tpad, self.encoder.num_extra, cfg.pool)).view(b, n * n * cfg.dim)
        g = self.jigsaw_head(tiles)  # the tiles' features in their shuffled order
        normaliser = float(self.normaliser)
        if cfg.estimate_partition and normaliser == 0:
            estimate = global_average(pirl_normaliser(f, self.memory, ids, negative_ids, cfg.temperature))
            if self.training and finite(estimate):
                self.normaliser.fill_(float(estimate))
            normaliser = float(estimate)
        per_sample = pirl_loss(f, g, self.memory[:rows], ids, negative_ids, cfg.temperature, cfg.weight, normaliser)
        if self.training:
            self._remember(all_ids, all_gather_rows(f.detach().float()), rows)
        return {"loss": global_mean(per_sample * b, b),
                "pred_var": compute_var(F.normalize(f.detach().float(), dim=-1)),
                "student_rank": effective_rank(h), "jigsaw_cos": mean_cosine(f, g),
                "memory_rows": torch.tensor(float(rows)), "normaliser": torch.tensor(normaliser)}

    @torch.no_grad()
    def _remember(self, ids: torch.Tensor, features: torch.Tensor, rows: int) -> None:
        """Move the global batch's bank entries towards their image representations."""
        if not finite(features):
            return
        self.memory.copy_(pirl_memory_update(self.memory, ids, features, self.cfg.memory_momentum))
        self.memory_rows.fill_(rows)

    @classmethod
    def card_title(cls, cfg: PIRLConfig) -> str:
        return "PIRL (pretext-invariant representation learning)"

    @classmethod
    def card_tags(cls, cfg: PIRLConfig) -> list[str]:
        return ["pirl"]

    @classmethod
    def card_objective(cls, cfg: PIRLConfig, mask: Any) -> str:
        partition = ", partition function estimated on the first batch" if cfg.estimate_partition else ""
        return (f"PIRL: an image's and its {cfg.tiles} x {cfg.tiles} jigsaw's representations pulled to the image's "
                f"memory-bank entry against {cfg.negatives} bank negatives by NCE (temperature {cfg.temperature}, "
                f"lambda {cfg.weight}{partition}); heads not exported; {cfg.pool}-pooled encoder output")
