"""Image views for objectives that compare views (DINO, iBOT, BYOL): multi-crop (global crops and
smaller local crops, Caron et al. 2021) with the BYOL / DINO augmentations (Grill et al. 2020,
appendix B): random resized crop, horizontal flip, colour jitter in a random order, grayscale,
Gaussian blur and solarisation, then the adapter's normalisation.

Every random parameter is drawn per example from the example's own generator (numpy); the colour
operations then run batched over a view with one parameter per example, through kornia's functional
ops. kornia's random augmentation modules are not used: they draw their parameters from torch's
global generator once per batch, so an example's views would depend on its batch and its worker and
resume would not be exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageOps

from multissl.data.views import Inputs, ViewMaker

if TYPE_CHECKING:  # the model module names VisionViews as the adapter's views config
    from multissl.modalities.vision.model import VisionConfig


@dataclass
class VisionViews:
    """The recipe's ``views`` section for images: crops and their augmentations (BYOL / DINO defaults)."""

    global_crops: int = 2
    """Global views per image (the teacher's views)."""

    global_size: int = 0
    """Side of a global view in pixels, a multiple of ``adapter.patch_size``; 0: ``adapter.image_size``."""

    global_scale: tuple[float, float] = (0.4, 1.0)
    """Random resized crop of a global view: the range of its share of the image area."""

    local_crops: int = 0
    """Local views per image (multi-crop; the student's only)."""

    local_size: int = 0
    """Side of a local view in pixels, a multiple of ``adapter.patch_size``; 0: 3/7 of the global side
    rounded down to a multiple of the patch (DINO's 96 for 224)."""

    local_scale: tuple[float, float] = (0.05, 0.4)
    """Random resized crop of a local view: the range of its share of the image area."""

    flip: float = 0.5
    """Probability of a horizontal flip."""

    jitter: float = 0.8
    """Probability of colour jitter (brightness, contrast, saturation and hue, in a random order)."""

    brightness: float = 0.4
    """Jitter: the brightness factor is drawn from [1 - brightness, 1 + brightness]."""

    contrast: float = 0.4
    """Jitter: the contrast factor (a blend with the mean grey level) from [1 - contrast, 1 + contrast]."""

    saturation: float = 0.2
    """Jitter: the saturation factor (a blend with the grey image) from [1 - saturation, 1 + saturation]."""

    hue: float = 0.1
    """Jitter: the hue shift, in turns of the colour wheel, from [-hue, hue] (at most 0.5)."""

    grayscale: float = 0.2
    """Probability of turning a view grey (the same luma in the three channels)."""

    blur: tuple[float, ...] = (1.0, 0.1)
    """Probability of a Gaussian blur of each global view; the last value holds for further global views."""

    local_blur: float = 0.5
    """Probability of a Gaussian blur of a local view."""

    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """The blur's standard deviation in pixels is drawn from this range."""

    solarize: tuple[float, ...] = (0.0, 0.2)
    """Probability of solarising each global view; the last value holds for further global views."""

    local_solarize: float = 0.0
    """Probability of solarising a local view."""

    solarize_threshold: float = 0.5
    """Solarising inverts (x -> 1 - x) the pixel values at or above this level (pixels in [0, 1])."""

    def validate(self, where: str = "views") -> None:
        if self.global_crops < 1 or self.local_crops < 0:
            raise ValueError(f"{where}.global_crops must be >= 1 and {where}.local_crops >= 0")
        if self.global_size < 0 or self.local_size < 0:
            raise ValueError(f"{where}.global_size and {where}.local_size must be >= 0 (0: the default)")
        for key in ("global_scale", "local_scale"):
            low, high = getattr(self, key)
            if not 0 < low <= high <= 1:
                raise ValueError(f"{where}.{key} must satisfy 0 < low <= high <= 1, got {getattr(self, key)}")
        for key in ("flip", "jitter", "grayscale", "local_blur", "local_solarize", "solarize_threshold"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{where}.{key} must lie in [0, 1], got {getattr(self, key)}")
        for key in ("blur", "solarize"):
            values = getattr(self, key)
            if not values or not all(0 <= p <= 1 for p in values):
                raise ValueError(f"{where}.{key} must be a non-empty list of probabilities, got {list(values)}")
        for key in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{where}.{key} must lie in [0, 1], got {getattr(self, key)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"{where}.hue must lie in [0, 0.5], got {self.hue}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"{where}.blur_sigma must satisfy 0 < low <= high, got {self.blur_sigma}")


@dataclass(frozen=True)
class _Kind:
    """What one view is: its side and its crop and augmentation probabilities."""

    size: int
    scale: tuple[float, float]
    blur: float
    solarize: float


class ImageViews(ViewMaker):
    """Multi-crop views of decoded images (examples hold ``image``, a PIL image): each view is
    ``{"pixel_values": (B, 3, side, side)}``, normalised with the adapter's mean and std.

    >>> from multissl.modalities.vision.model import VisionConfig
    >>> maker = ImageViews(VisionViews(local_crops=2), VisionConfig(image_size=32, patch_size=4))
    >>> views = maker([{"image": Image.new("RGB", (40, 30))}], [np.random.default_rng(0)])
    >>> [tuple(v["pixel_values"].shape) for v in views]
    [(1, 3, 32, 32), (1, 3, 32, 32), (1, 3, 12, 12), (1, 3, 12, 12)]
    """

    def __init__(self, views: VisionViews, cfg: VisionConfig):
        self.views, self.cfg = views, cfg
        p = cfg.patch_size
        global_size = views.global_size or cfg.image_size
        local_size = views.local_size or max(p, global_size * 3 // 7 // p * p)
        for key, side in (("global_size", global_size), ("local_size", local_size)):
            if side % p:
                raise ValueError(f"views.{key} ({side}) must be a multiple of adapter.patch_size ({p})")
        self.global_views, self.local_views = views.global_crops, views.local_crops

        def nth(values: tuple[float, ...], i: int) -> float:
            return values[min(i, len(values) - 1)]

        self.kinds = [_Kind(global_size, views.global_scale, nth(views.blur, i), nth(views.solarize, i))
                      for i in range(views.global_crops)]
        self.kinds += [_Kind(local_size, views.local_scale, views.local_blur, views.local_solarize)] * views.local_crops
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(cfg.std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, examples: list[dict[str, Any]], rngs: list[np.random.Generator]) -> list[Inputs]:
        from multissl.modalities.vision.data import crop_box

        crops: list[list[torch.Tensor]] = [[] for _ in self.kinds]
        params: list[list[dict[str, Any]]] = [[] for _ in self.kinds]
        for e, rng in zip(examples, rngs, strict=True):
            img = e["image"]
            for v, kind in enumerate(self.kinds):  # all of an example's draws, in a fixed order
                box = crop_box(img.size, kind.scale, rng)
                crops[v].append(self._crop(img, box, kind.size, rng))
                params[v].append(self._colour_params(kind, rng))
        return [{"pixel_values": self._colour(torch.stack(c), p)} for c, p in zip(crops, params, strict=True)]

    def _crop(self, img: Image.Image, box: tuple[int, int, int, int], side: int, rng: np.random.Generator
              ) -> torch.Tensor:
        """The ``box`` of ``img`` resized (bicubic) to ``side``, and perhaps flipped: (3, side, side) in [0, 1]."""
        view = img.resize((side, side), Image.BICUBIC, box=box)
        if rng.random() < self.views.flip:
            view = ImageOps.mirror(view)
        a = np.asarray(view, dtype=np.float32) * np.float32(1 / 255)
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))

    def _colour_params(self, kind: _Kind, rng: np.random.Generator) -> dict[str, Any]:
        """Every colour choice of one view; each is drawn whether or not it is used, so an example's
        later draws do not depend on earlier coin flips."""
        v = self.views
        return {
            "jitter": rng.random() < v.jitter,
            "factors": (rng.uniform(1 - v.brightness, 1 + v.brightness), rng.uniform(1 - v.contrast, 1 + v.contrast),
                        rng.uniform(1 - v.saturation, 1 + v.saturation), rng.uniform(-v.hue, v.hue)),
            "order": rng.permutation(4),
            "grayscale": rng.random() < v.grayscale,
            "blur": rng.random() < kind.blur,
            "sigma": rng.uniform(*v.blur_sigma),
            "solarize": rng.random() < kind.solarize,
        }

    def _colour(self, x: torch.Tensor, params: list[dict[str, Any]]) -> torch.Tensor:
        """Jitter, grayscale, blur, solarise (each on the examples that drew it), then normalise."""
        from kornia.color import rgb_to_grayscale
        from kornia.enhance import (
            adjust_brightness_accumulative,
            adjust_contrast_with_mean_subtraction,
            adjust_hue,
            adjust_saturation_with_gray_subtraction,
            solarize,
        )
        from kornia.filters import gaussian_blur2d

        def where(key: str) -> torch.Tensor:
            return torch.tensor([bool(p[key]) for p in params])

        # the torchvision formulas: brightness scales, contrast blends with the mean grey, saturation
        # with the grey image; hue shifts by a turn fraction (kornia takes radians)
        ops = (adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction,
               adjust_saturation_with_gray_subtraction, lambda img, f: adjust_hue(img, f * 2 * math.pi))
        factors = torch.tensor([p["factors"] for p in params], dtype=torch.float32)
        order = torch.from_numpy(np.stack([p["order"] for p in params]))
        jitter = where("jitter")
        for step in range(4):  # each example's own order: at step s, op k runs where order[:, s] == k
            for k, op in enumerate(ops):
                sel = jitter & (order[:, step] == k)
                if sel.any():
                    x[sel] = op(x[sel], factors[sel, k]).clamp(0, 1)
        sel = where("grayscale")
        if sel.any():
            x[sel] = rgb_to_grayscale(x[sel]).expand(-1, 3, -1, -1)
        sel = where("blur")
        if sel.any():
            sigma = torch.tensor([p["sigma"] for p in params], dtype=torch.float32)[sel]
            x[sel] = gaussian_blur2d(x[sel], self._kernel(x.shape[-1]), sigma[:, None].expand(-1, 2).contiguous())
        sel = where("solarize")
        if sel.any():
            x[sel] = solarize(x[sel], self.views.solarize_threshold)
        return (x - self.mean) / self.std

    def _kernel(self, side: int) -> int:
        """An odd blur kernel that covers 3 standard deviations each way of the widest blur, and whose
        reflected padding fits in the view."""
        return min(2 * math.ceil(3 * self.views.blur_sigma[1]) + 1, 2 * (side - 1) + 1)

    def token_grids(self, inputs: dict[str, torch.Tensor]) -> tuple[int, list[tuple[int, ...]]]:
        b, _, h, w = inputs["pixel_values"].shape
        grid = (h // self.cfg.patch_size, w // self.cfg.patch_size)
        return grid[0] * grid[1], [grid] * b

    def picture(self, inputs: dict[str, torch.Tensor], i: int) -> np.ndarray:
        x = inputs["pixel_values"][i : i + 1].float() * self.std + self.mean
        return x[0].permute(1, 2, 0).clamp(0, 1).numpy()
