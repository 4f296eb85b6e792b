"""Image data: find images (folders, ``datasets`` folders, numpy arrays), decode them with Pillow in
any mode to RGB with EXIF rotation applied, crop and flip for training or resize for evaluation, and
batch them with patch masks. A bad file is skipped with a warning naming it (or, with
``data.strict``, stops the run). No torchvision: the transforms are small and tested here."""

from __future__ import annotations

import io
import logging
import math
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from multissl.config import DataConfig, RecipeError
from multissl.core.masking import MaskConfig, sample_mask
from multissl.data.saved_datasets import is_saved_dataset, media_column
from multissl.data.seeds import example_rng
from multissl.data.skipping import first_decodable, made_or_skipped, warn_skipped, warn_unrecognised
from multissl.data.streams import SeededStream, media_stream
from multissl.modalities.vision import VisionConfig

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class BadImageError(RecipeError):
    """An image could not be used and ``data.strict`` is set."""


@dataclass(frozen=True)
class Picture:
    """One image: where it is."""

    name: str
    """Path, or ``source[row]`` for in-memory images."""

    data: bytes | np.ndarray | None = None
    """Encoded bytes (``datasets`` rows) or a pixel array (arrays); None: read ``name``."""

    def open(self) -> Image.Image:
        """The decoded image in RGB, EXIF orientation applied (raises on corrupt or oversized data)."""
        if isinstance(self.data, np.ndarray):
            return to_rgb(Image.fromarray(self.data))
        src = io.BytesIO(self.data) if self.data is not None else self.name
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the pixel limit: unusable
            with Image.open(src) as img:
                img.load()
                return to_rgb(ImageOps.exif_transpose(img))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB: palettes and alpha via RGBA (alpha dropped), 16/32-bit and float
    greyscale scaled to 8 bits, CMYK and others through Pillow's converters.

    >>> to_rgb(Image.new("I;16", (2, 2), 65535)).getpixel((0, 0))
    (255, 255, 255)
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(a.max()), 1.0)
        img = Image.fromarray(np.clip(a / top * 255.0, 0, 255).round().astype(np.uint8))
    elif img.mode in ("P", "PA", "LA"):
        img = img.convert("RGBA")
    return img.convert("RGB")


# --- finding and checking images -----------------------------------------------------------------

def find_images(spec: str, column: str = "image") -> list[Picture]:
    """Images named by ``spec``: image files, folders (recursive; class sub-folders are just
    folders here), ``datasets`` folders saved with ``save_to_disk``, and ``.npy`` arrays of shape
    (N, H, W) or (N, H, W, C) in uint8; several separated by commas."""
    pictures: list[Picture] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        p = Path(part)
        if is_saved_dataset(p):
            pictures += [Picture(name, data) for name, data in media_column(p, column, "data.image_column")]
        elif p.is_dir():
            found = [f for f in sorted(p.rglob("*")) if f.is_file()]
            pictures += [Picture(str(f)) for f in found if f.suffix.lower() in IMAGE_EXTENSIONS]
            warn_unrecognised(p, [f for f in found if f.suffix.lower() not in IMAGE_EXTENSIONS], IMAGE_EXTENSIONS)
        elif p.is_file() and p.suffix == ".npy":
            arr = np.load(p, mmap_mode="r")
            if arr.ndim not in (3, 4) or arr.dtype != np.uint8:
                raise RecipeError(f"data.path: {p}: expected uint8 (N, H, W) or (N, H, W, C), got {arr.dtype} "
                                  f"{arr.shape}")
            pictures += [Picture(f"{p}[{i}]", np.asarray(arr[i])) for i in range(len(arr))]
        elif p.is_file():
            pictures.append(Picture(str(p)))
        else:
            raise RecipeError(f"data.path: {part}: no such file or folder")
    if not pictures:
        raise RecipeError(f"data.path: {spec}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    return pictures


def check(picture: Picture, min_side: int) -> str:
    """Why ``picture`` cannot be used, or "" (decodes it fully: truncated files fail here)."""
    try:
        img = picture.open()
    except Exception as e:  # Pillow raises several types for corrupt, truncated or oversized files
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})"
    if min(img.size) < min_side:
        return f"too small ({img.size[0]}x{img.size[1]}, the shortest side must be >= {min_side})"
    return ""


def scan_images(pictures: list[Picture], cfg: VisionConfig, strict: bool = False
                ) -> tuple[list[Picture], list[tuple[str, str]]]:
    """(usable images, [(name, problem)]); ``strict`` raises at the first problem."""
    good, bad = [], []
    for pic in pictures:
        why = check(pic, cfg.min_side)
        if why:
            if strict:
                raise BadImageError(f"{pic.name}: {why} (data.strict is set)")
            bad.append((pic.name, why))
        else:
            good.append(pic)
    return good, bad


# --- transforms ----------------------------------------------------------------------------------

def to_tensor(img: Image.Image, cfg: VisionConfig) -> torch.Tensor:
    """(C, H, W) float32: pixels / 255, minus ``cfg.mean``, over ``cfg.std``."""
    a = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
    a = (a - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def eval_transform(img: Image.Image, cfg: VisionConfig) -> torch.Tensor:
    """Resize to ``image_size`` square (bicubic) and normalise: what the exported processor does."""
    return to_tensor(img.resize((cfg.image_size, cfg.image_size), Image.BICUBIC), cfg)


def train_transform(img: Image.Image, cfg: VisionConfig, rng: np.random.Generator) -> torch.Tensor:
    """Random resized crop (area share in ``crop_scale``, aspect 3/4 to 4/3, bicubic), random
    horizontal flip, normalise.

    >>> img = Image.new("RGB", (50, 40))
    >>> train_transform(img, VisionConfig(image_size=16, patch_size=4), np.random.default_rng(0)).shape
    torch.Size([3, 16, 16])
    """
    w, h = img.size
    box = (0, 0, w, h)
    for _ in range(10):
        area = w * h * rng.uniform(*cfg.crop_scale)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            box = (left, top, left + cw, top + ch)
            break
    img = img.resize((cfg.image_size, cfg.image_size), Image.BICUBIC, box=box)
    if cfg.flip and rng.random() < 0.5:
        img = ImageOps.mirror(img)
    return to_tensor(img, cfg)


# --- the dataset and the collator ----------------------------------------------------------------

class ImageDataset(torch.utils.data.Dataset):
    """Decoded, augmented, normalised images. An image that fails to decode now (it passed the scan)
    is replaced by the next one and counted in ``failed``."""

    def __init__(self, pictures: list[Picture], cfg: VisionConfig, seed: int, strict: bool = False,
                 train: bool = True):
        self.pictures, self.cfg, self.seed, self.strict, self.train, self.epoch = pictures, cfg, seed, strict, train, 0
        self.names = [p.name for p in pictures]
        self.failed: list[str] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pictures)

    def __getitem__(self, i: int) -> dict[str, Any]:
        seed = (self.seed, self.epoch, int(i))

        def load(j: int) -> torch.Tensor:
            img = self.pictures[j].open()
            return train_transform(img, self.cfg, example_rng(seed)) if self.train else eval_transform(img, self.cfg)

        x = first_decodable(self.names, i, load, self.strict, self.failed, "vision", BadImageError)
        return {"pixel_values": x, "seed": seed}


def _stream_example(row: dict[str, Any], seed: tuple[int, ...], cfg: VisionConfig, strict: bool) -> dict | None:
    def make() -> dict[str, Any]:
        picture = Picture(row["name"], row["bytes"])
        why = check(picture, cfg.min_side)
        if why:
            raise ValueError(why)
        return {"pixel_values": train_transform(picture.open(), cfg, example_rng(seed))}

    return made_or_skipped(row["name"], make, strict, "vision", BadImageError)


def build_image_dataset(data: DataConfig, cfg: VisionConfig, seed: int) -> ImageDataset | SeededStream:
    """Find, check and wrap the images of ``data.path``; bad files are counted and named. With
    ``data.streaming`` nothing is scanned up front: images are checked as they are streamed."""
    if data.streaming:
        rows = media_stream(data.path, data.image_column, "data.image_column", find_images)
        return SeededStream(rows, seed, partial(_stream_example, cfg=cfg, strict=data.strict), data.shuffle_buffer)
    good, bad = scan_images(find_images(data.path, data.image_column), cfg, data.strict)
    warn_skipped(bad, len(good), data.path, "vision", "images")
    return ImageDataset(good, cfg, seed, data.strict)


class ImageCollator:
    """Stacks images and makes ``M`` patch-grid masks per image.

    >>> c = ImageCollator(MaskConfig(kind="inverse_block", prob=0.8, length=3, adjust=0.07),
    ...                   VisionConfig(image_size=56, patch_size=4), clones=2)
    >>> b = c([{"pixel_values": torch.zeros(3, 56, 56), "seed": (0, 0, 0)}])
    >>> b["mask"].shape, int(b["mask"][0].sum())
    (torch.Size([2, 196]), 157)
    """

    def __init__(self, mask: MaskConfig, cfg: VisionConfig, clones: int = 1):
        self.mask, self.cfg, self.clones = mask, cfg, clones

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        pixels = torch.stack([e["pixel_values"] for e in examples])
        masks = np.zeros((len(examples) * self.clones, self.cfg.grid[0] * self.cfg.grid[1]), dtype=bool)
        for i, e in enumerate(examples):
            rng = example_rng((*e["seed"], 1))  # stream 1: masks; the crop used the base stream
            for c in range(self.clones):
                masks[i * self.clones + c] = sample_mask(self.mask, self.cfg.grid, rng).reshape(-1)
        return {"inputs": {"pixel_values": pixels}, "mask": torch.from_numpy(masks)}
