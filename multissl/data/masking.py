"""Mask generators. They run in the collator (DataLoader workers) on numpy, one sample at a time,
with a generator the caller seeds, so masks are reproducible whatever the worker or resume point.

Every generator returns a boolean array where True means "masked" (hidden from the student and
regressed). The statistics each one must meet are the data2vec reference ones (see tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

MaskKind = Literal["random", "span", "block", "inverse_block", "beit", "bert", "multiblock", "none"]


@dataclass
class MaskConfig:
    """How the student's input is masked."""

    kind: MaskKind = "random"
    """random: exact-ratio random tokens (data2vec 2.0 text); span: wav2vec2 spans (v1 audio/text);
    block / inverse_block: exact-ratio 1-D or 2-D blocks (data2vec 2.0 audio / vision);
    beit: BEiT's rectangles of random area and aspect on a 2-D grid (v1 vision);
    bert: BERT 80/10/10 token masking (v1 text); multiblock: I-JEPA's context block and target
    blocks on a 2-D grid (the mask is what lies outside the context; see ``targets``); none: nothing masked."""

    prob: float = 0.48
    """Masking probability: the exact masked fraction (random, block, inverse_block), the span-start
    rate times span length (span), or the selected fraction (bert)."""

    length: int = 1
    """Span length (span), block width in tokens (block: 1-D length, 2-D side), or the fewest
    patches in one rectangle (beit)."""

    adjust: float = 0.0
    """Extra probability of block centres before the exact-ratio correction (data2vec 2.0 mask_prob_adjust)."""

    min_masks: int = 1
    """Minimum number of spans per sample (span)."""

    aspect: float = 0.3
    """Smallest aspect ratio of a rectangle (beit); the largest is its inverse."""

    bert_mask: float = 0.8
    """Of the selected tokens, the fraction replaced by the mask token (bert)."""

    bert_random: float = 0.1
    """Of the selected tokens, the fraction replaced by a random token (bert). The rest stay unchanged."""

    targets: int = 4
    """Target blocks per image (multiblock; I-JEPA's M, 4 in the paper). Each one is a rectangle of
    its own scale and aspect; they may overlap each other, never the context."""

    target_scale: tuple[float, float] = (0.15, 0.2)
    """Range of a target block's share of the grid's patches (multiblock; the paper's (0.15, 0.2))."""

    target_aspect: tuple[float, float] = (0.75, 1.5)
    """Range of a target block's aspect ratio, height over width (multiblock; the paper's (0.75, 1.5))."""

    context_scale: tuple[float, float] = (0.85, 1.0)
    """Range of the context block's share of the grid's patches before the target blocks are removed
    from it (multiblock; the paper's (0.85, 1.0)); the context block is square (aspect 1)."""

    min_context: int = 4
    """Fewest patches the context may keep once the targets are removed from it (multiblock); a draw
    that keeps fewer is drawn again (the released I-JEPA code's ``min_keep``: 4 by default, 10 in its
    ViT-H configs)."""

    def validate(self, where: str = "mask") -> None:
        if not 0.0 <= self.prob < 1.0:
            raise ValueError(f"{where}.prob must be in [0, 1), got {self.prob}")
        if self.length < 1:
            raise ValueError(f"{where}.length must be >= 1, got {self.length}")
        if self.bert_mask + self.bert_random > 1.0 or min(self.bert_mask, self.bert_random) < 0:
            raise ValueError(f"{where}.bert_mask + {where}.bert_random must lie in [0, 1]")
        if self.targets < 1:
            raise ValueError(f"{where}.targets must be >= 1, got {self.targets}")
        for key in ("target_scale", "context_scale"):
            low, high = getattr(self, key)
            if not 0 < low <= high <= 1:
                raise ValueError(f"{where}.{key} must satisfy 0 < low <= high <= 1, got {getattr(self, key)}")
        if not 0 < self.target_aspect[0] <= self.target_aspect[1]:
            raise ValueError(f"{where}.target_aspect must satisfy 0 < low <= high, got {self.target_aspect}")
        if self.min_context < 1:
            raise ValueError(f"{where}.min_context must be >= 1, got {self.min_context}")


def random_mask(length: int, prob: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``length - int(length * (1 - prob))`` positions masked, uniformly at random (MAE rule).

    >>> random_mask(10, 0.5, np.random.default_rng(0)).sum()
    np.int64(5)
    """
    n_keep = int(length * (1.0 - prob))
    mask = np.ones(length, dtype=bool)
    mask[rng.permutation(length)[:n_keep]] = False
    return mask


def span_mask(
    length: int, prob: float, span: int, rng: np.random.Generator, min_masks: int = 1
) -> np.ndarray:
    """wav2vec2 span masking: ``int(prob * length / span + U)`` distinct starts, each masking ``span``
    positions; overlapping spans merge, so p=0.65, span 10 masks about 49% of positions.

    >>> span_mask(100, 0.65, 10, np.random.default_rng(0)).mean() > 0.3
    np.True_
    """
    mask = np.zeros(length, dtype=bool)
    if length == 0:
        return mask
    span = min(span, length)
    n = max(min_masks, int(prob * length / span + rng.random()))
    room = length - span + 1
    n = min(n, room)
    if n <= 0:
        return mask
    starts = rng.choice(room, n, replace=False)
    idx = (starts[:, None] + np.arange(span)[None, :]).ravel()
    mask[idx] = True
    return mask


def _exact(mask: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Add or remove random positions until exactly ``target`` are True."""
    flat = mask.reshape(-1).copy()
    n = int(flat.sum())
    if n > target:
        on = np.flatnonzero(flat)
        flat[rng.choice(on, n - target, replace=False)] = False
    elif n < target:
        off = np.flatnonzero(~flat)
        flat[rng.choice(off, target - n, replace=False)] = True
    return flat.reshape(mask.shape)


def block_mask(
    shape: tuple[int, ...],
    prob: float,
    width: int,
    rng: np.random.Generator,
    adjust: float = 0.0,
    inverse: bool = False,
) -> np.ndarray:
    """data2vec 2.0 block masking over a 1-D sequence or a 2-D grid, with an exact ratio.

    Block centres are drawn with replacement, ``int(numel * (p + adjust) / width**ndim)`` of them, each
    expanded to a block of ``width`` per dimension (clamped at the edges); then positions are added or
    removed at random until exactly ``int(numel * p)`` are in blocks. With ``inverse`` the blocks are the
    *kept* part: ``p`` becomes ``1 - prob`` and the result is inverted, so ``prob`` stays the masked share.

    >>> m = block_mask((14, 14), 0.8, 3, np.random.default_rng(0), adjust=0.07, inverse=True)
    >>> int(m.sum())
    157
    """
    numel = int(np.prod(shape))
    p = 1.0 - prob if inverse else prob
    grid = np.zeros(shape, dtype=bool)
    if numel == 0:
        return grid
    n_centres = int(numel * (p + adjust) / width ** len(shape))
    if n_centres > 0:
        centres = [rng.integers(0, s, n_centres) for s in shape]
        lo = width // 2
        for offs in np.ndindex(*([width] * len(shape))):
            idx = tuple(np.clip(c + o - lo, 0, s - 1) for c, o, s in zip(centres, offs, shape, strict=True))
            grid[idx] = True
    grid = _exact(grid, int(numel * p), rng)
    return ~grid if inverse else grid


def beit_mask(shape: tuple[int, int], prob: float, min_patches: int, rng: np.random.Generator,
              aspect: float = 0.3, attempts: int = 10) -> np.ndarray:
    """BEiT's block masking on an (H, W) grid: rectangles of log-uniform aspect ratio in
    [aspect, 1/aspect] and area from ``min_patches`` up to what is left, added until about
    ``prob * H * W`` patches are masked (a rectangle may overshoot; ``attempts`` tries per rectangle).

    >>> m = beit_mask((14, 14), 0.6, 16, np.random.default_rng(0))
    >>> 100 <= int(m.sum()) <= 140
    True
    """
    h, w = shape
    target = int(round(prob * h * w))
    mask = np.zeros(shape, dtype=bool)
    lo, hi = math.log(aspect), math.log(1 / aspect)
    count = 0
    while count < target:
        left = target - count
        delta = 0
        for _ in range(attempts):
            area = rng.uniform(min(min_patches, left), left)
            ratio = math.exp(rng.uniform(lo, hi))
            bh, bw = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if 0 < bw < w and 0 < bh < h:
                top, start = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
                block = mask[top:top + bh, start:start + bw]
                new = bh * bw - int(block.sum())
                if 0 < new <= left:
                    block[:] = True
                    delta = new
                    break
        if delta == 0:
            break
        count += delta
    return mask


MULTIBLOCK_ATTEMPTS = 100
"""Draws of the blocks before :func:`multiblock_mask` gives up on leaving ``min_context`` patches."""


def _rectangle(shape: tuple[int, int], scale: tuple[float, float], aspect: tuple[float, float],
               rng: np.random.Generator) -> tuple[slice, slice]:
    """A rectangle on an (H, W) grid, as (rows, columns) slices: its share of the patches uniform in
    ``scale``, its aspect (height / width) uniform in ``aspect``, each side rounded and kept within
    1 and the grid's side, its top-left corner uniform over the places where it fits."""
    h, w = shape
    area = rng.uniform(*scale) * h * w
    ratio = rng.uniform(*aspect)
    bh = min(max(int(round(math.sqrt(area * ratio))), 1), h)
    bw = min(max(int(round(math.sqrt(area / ratio))), 1), w)
    top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    return slice(top, top + bh), slice(left, left + bw)


def multiblock_mask(cfg: MaskConfig, shape: tuple[int, int], rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """I-JEPA's multi-block masks (Assran et al. 2023, arXiv 2301.08243, section 3 and appendix A):
    ``cfg.targets`` target blocks, each of its own scale in ``cfg.target_scale`` and aspect in
    ``cfg.target_aspect`` (possibly overlapping one another), and one square context block of scale
    in ``cfg.context_scale`` (cut to the grid where a side does not fit) from which every target
    patch is removed. A draw whose context keeps
    fewer than ``cfg.min_context`` patches is drawn again. Returns (context (H, W), targets
    (M, H, W)), True on the patches each one holds; the context is disjoint from every target.

    Every image gets its own block sizes and counts (the released code draws one size per batch and
    trims every image's context to the smallest count, which ties an image's masks to its batch).

    >>> context, targets = multiblock_mask(MaskConfig(kind="multiblock"), (14, 14), np.random.default_rng(0))
    >>> targets.shape, bool((context & targets.any(0)).any()), 30 <= int(targets[0].sum()) <= 40
    ((4, 14, 14), False, True)
    """
    if len(shape) != 2:
        raise ValueError(f"mask.kind multiblock needs a 2-D grid, got shape {shape}")
    for _ in range(MULTIBLOCK_ATTEMPTS):
        targets = np.zeros((cfg.targets, *shape), dtype=bool)
        for block in targets:
            block[_rectangle(shape, cfg.target_scale, cfg.target_aspect, rng)] = True
        context = np.zeros(shape, dtype=bool)
        context[_rectangle(shape, cfg.context_scale, (1.0, 1.0), rng)] = True
        context &= ~targets.any(0)
        if int(context.sum()) >= cfg.min_context:
            return context, targets
    raise ValueError(f"mask: {MULTIBLOCK_ATTEMPTS} multiblock draws on a {shape[0]}x{shape[1]} grid left fewer than "
                     f"mask.min_context={cfg.min_context} context patches; lower mask.targets, mask.target_scale or "
                     "mask.min_context")


BERT_NONE, BERT_MASK, BERT_RANDOM, BERT_KEEP = 0, 1, 2, 3


def bert_mask(
    length: int, prob: float, rng: np.random.Generator, p_mask: float = 0.8, p_random: float = 0.1
) -> np.ndarray:
    """BERT token selection: ``int(prob * length + U)`` positions selected; of those, ``p_mask`` become
    the mask token, ``p_random`` a random token, the rest stay. Returns codes
    (``BERT_NONE``, ``BERT_MASK``, ``BERT_RANDOM``, ``BERT_KEEP``) as int8.

    >>> codes = bert_mask(1000, 0.15, np.random.default_rng(0))
    >>> int((codes != BERT_NONE).sum()) in (150, 151)
    True
    """
    codes = np.zeros(length, dtype=np.int8)
    n = min(length, int(prob * length + rng.random()))
    if n == 0:
        return codes
    chosen = rng.choice(length, n, replace=False)
    u = rng.random(n)
    codes[chosen] = np.where(u < p_mask, BERT_MASK, np.where(u < p_mask + p_random, BERT_RANDOM, BERT_KEEP))
    return codes


def sample_mask(cfg: MaskConfig, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """One mask of ``shape`` ((T,) for sequences, (H, W) for grids) as the config says.

    For ``bert`` this returns the positions replaced by the mask token (those regressed); use
    :func:`bert_mask` for the full 80/10/10 codes. For ``multiblock`` it returns what lies outside
    the context block; use :func:`multiblock_mask` for the target blocks too.

    >>> sample_mask(MaskConfig(kind="block", prob=0.5, length=5, adjust=0.05), (50,),
    ...             np.random.default_rng(0)).sum()
    np.int64(25)
    """
    if cfg.kind == "none":
        return np.zeros(shape, dtype=bool)
    if cfg.kind == "block":
        return block_mask(shape, cfg.prob, cfg.length, rng, cfg.adjust)
    if cfg.kind == "inverse_block":
        return block_mask(shape, cfg.prob, cfg.length, rng, cfg.adjust, inverse=True)
    if cfg.kind == "beit":
        if len(shape) != 2:
            raise ValueError(f"mask.kind beit needs a 2-D grid, got shape {shape}")
        return beit_mask(shape, cfg.prob, cfg.length, rng, cfg.aspect)
    if cfg.kind == "multiblock":
        return ~multiblock_mask(cfg, shape, rng)[0]
    numel = int(np.prod(shape))
    if cfg.kind == "random":
        flat = random_mask(numel, cfg.prob, rng)
    elif cfg.kind == "span":
        flat = span_mask(numel, cfg.prob, cfg.length, rng, cfg.min_masks)
    elif cfg.kind == "bert":
        flat = bert_mask(numel, cfg.prob, rng, cfg.bert_mask, cfg.bert_random) == BERT_MASK
    else:
        raise ValueError(f"mask.kind: unknown kind {cfg.kind!r}")
    return flat.reshape(shape)


def multi_mask(
    cfg: MaskConfig, shape: tuple[int, ...], clones: int, rng: np.random.Generator
) -> np.ndarray:
    """``clones`` independent masks for one sample, stacked: shape ``(clones, *shape)``.

    >>> multi_mask(MaskConfig(kind="random", prob=0.5), (8,), 3, np.random.default_rng(0)).shape
    (3, 8)
    """
    return np.stack([sample_mask(cfg, shape, rng) for _ in range(clones)])
