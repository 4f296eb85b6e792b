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

from multissl.data.config import DataConfig
from multissl.data.masking import MaskConfig, multiblock_mask, sample_mask
from multissl.data.media import MediaDataset, MediaFiles, build_media_dataset
from multissl.data.seeds import example_rng
from multissl.data.streams import SeededStream
from multissl.errors import RecipeError
from multissl.modalities.vision.model import IMAGE_EXTENSIONS, VisionConfig

log = logging.getLogger(__name__)



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
    return IMAGE_FILES.find(spec, column)


TABLE_EXTENSIONS = (".csv", ".jsonl", ".parquet")
"""Tables that list images: a row per image, its path (relative to the table's folder) in
``data.image_column``, and labels in ``data.label_column``."""


def _read_table(path: Path, columns: list[tuple[str, str]]):
    """A table listing images, as a pandas DataFrame; a missing column is an error naming its key."""
    import pandas as pd

    try:
        df = (pd.read_csv(path) if path.suffix == ".csv" else pd.read_json(path, lines=True)
              if path.suffix == ".jsonl" else pd.read_parquet(path))
    except Exception as e:  # pandas and pyarrow raise several types for malformed files
        raise RecipeError(f"data.path: {path}: unreadable table ({str(e).splitlines()[0][:160]})") from None
    for column, key in columns:
        if column not in df.columns:
            raise RecipeError(f"{key}: {path} has no column {column!r} (columns: {', '.join(map(str, df.columns))})")
    return df


def _table_names(path: Path, df, column: str) -> list[str]:
    return [str(v) if Path(str(v)).is_absolute() else str(path.parent / str(v)) for v in df[column]]


def image_labels(spec: str, column: str, label_column: str) -> dict[str, int]:
    """The label id of every image ``spec`` names, by image name: from ``label_column`` of image tables
    and ``datasets`` folders. Images in folders or arrays carry no labels (a one-line error)."""
    import datasets

    from multissl.data.labels import label_id, missing_label
    from multissl.data.saved_datasets import is_saved_dataset, media_column

    labels: dict[str, int] = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        p = Path(part)
        if is_saved_dataset(p):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train"] if "train" in ds else next(iter(ds.values()))
            if label_column not in ds.column_names:
                raise RecipeError(f"data.label_column: {p} has no column {label_column!r} (columns: "
                                  f"{', '.join(ds.column_names)})")
            names = [name for name, _ in media_column(p, column, "data.image_column")]
            values = ds[label_column]
        elif p.is_file() and p.suffix in TABLE_EXTENSIONS:
            df = _read_table(p, [(column, "data.image_column"), (label_column, "data.label_column")])
            names, values = _table_names(p, df, column), df[label_column].tolist()
        else:
            raise RecipeError(f"data.label_column: {part}: images in folders or arrays carry no labels; list them in "
                              f"a table ({', '.join(TABLE_EXTENSIONS)}) with columns {column!r} (the path) and "
                              f"{label_column!r}, or give a datasets folder")
        for name, value in zip(names, values, strict=True):
            if missing_label(value):
                raise RecipeError(f"data.label_column: {part}: {name} has no label in column {label_column!r}")
            labels[name] = label_id(value)
    return labels


def _listing(path: Path, column: str) -> list[Picture] | None:
    if path.suffix in TABLE_EXTENSIONS:
        df = _read_table(path, [(column, "data.image_column")])
        return [Picture(name) for name in _table_names(path, df, column)]
    if path.suffix != ".npy":
        return None
    arr = np.load(path, mmap_mode="r")
    if arr.ndim not in (3, 4) or arr.dtype != np.uint8:
        raise RecipeError(f"data.path: {path}: expected uint8 (N, H, W) or (N, H, W, C), got {arr.dtype} {arr.shape}")
    return [Picture(f"{path}[{i}]", np.asarray(arr[i])) for i in range(len(arr))]


IMAGE_FILES = MediaFiles("vision", "images", "images", IMAGE_EXTENSIONS, "data.image_column", Picture, BadImageError,
                         _listing)


def check(picture: Picture, min_side: int) -> str:
    """Why ``picture`` cannot be used, or "" (decodes it fully: truncated files fail here)."""
    try:
        img = picture.open()
    except Exception as e:  # Pillow raises several types for corrupt, truncated or oversized files
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})"
    if min(img.size) < min_side:
        return f"too small ({img.size[0]}x{img.size[1]}, the shortest side must be >= {min_side})"
    return ""


def _checked(picture: Picture, min_side: int) -> tuple[Picture | None, str]:
    why = check(picture, min_side)
    return (None, why) if why else (picture, "")


def scan_images(pictures: list[Picture], cfg: VisionConfig, strict: bool = False
                ) -> tuple[list[Picture], list[tuple[str, str]]]:
    """(usable images, [(name, problem)]); ``strict`` raises at the first problem."""
    return IMAGE_FILES.scan(pictures, partial(_checked, min_side=cfg.min_side), strict)


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
    img = img.resize((cfg.image_size, cfg.image_size), Image.BICUBIC, box=crop_box(img.size, cfg.crop_scale, rng))
    if cfg.flip and rng.random() < 0.5:
        img = ImageOps.mirror(img)
    return to_tensor(img, cfg)


def crop_box(size: tuple[int, int], scale: tuple[float, float], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random resized crop's box (left, top, right, bottom) in an image of ``size`` (w, h): its area
    a share in ``scale`` of the image's, its aspect (w / h) log-uniform in 3/4 to 4/3; the whole image
    when ten draws do not fit.

    >>> left, top, right, bottom = crop_box((50, 40), (0.2, 1.0), np.random.default_rng(0))
    >>> 0 <= left < right <= 50 and 0 <= top < bottom <= 40
    True
    """
    w, h = size
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return left, top, left + cw, top + ch
    return 0, 0, w, h


# --- the dataset and the collator ----------------------------------------------------------------

class ImageDataset(MediaDataset):
    """Decoded, augmented (or, with ``train`` False, resized), normalised images."""

    key = "pixel_values"
    files = IMAGE_FILES

    def __init__(self, pictures: list[Picture], cfg: VisionConfig, seed: int, strict: bool = False,
                 train: bool = True):
        super().__init__(pictures, seed, strict)
        self.pictures, self.cfg, self.train = pictures, cfg, train

    def load(self, i: int, rng: np.random.Generator | None = None) -> torch.Tensor:
        img = self.pictures[i].open()
        return train_transform(img, self.cfg, rng) if self.train and rng is not None else eval_transform(img, self.cfg)


class DecodedImageDataset(ImageDataset):
    """Decoded images as they are (RGB, EXIF orientation applied), for collators that make several
    views of each (``multissl.modalities.vision.views``)."""

    key = "image"

    def load(self, i: int, rng: np.random.Generator | None = None) -> Image.Image:
        return self.pictures[i].open()


class LabelledImageDataset(DecodedImageDataset):
    """Decoded images and their label ids (``label``), for view collators of objectives that take labels."""

    def __init__(self, pictures: list[Picture], cfg: VisionConfig, seed: int, strict: bool = False, *,
                 labels: dict[str, int]):
        super().__init__(pictures, cfg, seed, strict)
        self.labels = labels

    def load(self, i: int, rng: np.random.Generator | None = None) -> tuple[Image.Image, int]:
        return self.pictures[i].open(), self.labels[self.pictures[i].name]  # together: a replacement keeps its label

    def __getitem__(self, i: int) -> dict[str, Any]:
        out = super().__getitem__(i)
        out["image"], out["label"] = out["image"]
        return out


def _streamed(picture: Picture, rng: np.random.Generator, cfg: VisionConfig, decoded: bool = False,
              labels: dict[str, int] | None = None) -> dict[str, Any]:
    why = check(picture, cfg.min_side)
    if why:
        raise ValueError(why)
    if labels is not None:
        return {"image": picture.open(), "label": labels[picture.name]}
    if decoded:
        return {"image": picture.open()}
    return {"pixel_values": train_transform(picture.open(), cfg, rng)}


def build_image_dataset(data: DataConfig, cfg: VisionConfig, seed: int, decoded: bool = False
                        ) -> ImageDataset | SeededStream:
    """Find, check and wrap the images of ``data.path``; bad files are counted and named. With
    ``data.streaming`` nothing is scanned up front: images are checked as they are streamed.
    ``decoded``: examples hold the decoded image (``image``) instead of a cropped tensor, for views;
    with ``data.label_column`` also its label id (``label``)."""
    labels = image_labels(data.path, data.image_column, data.label_column) if decoded and data.label_column else None
    wrap = (partial(LabelledImageDataset, labels=labels) if labels is not None else
            DecodedImageDataset if decoded else ImageDataset)
    return build_media_dataset(data, data.image_column, IMAGE_FILES, partial(_checked, min_side=cfg.min_side),
                               lambda good: wrap(good, cfg, seed, data.strict),
                               partial(_streamed, cfg=cfg, decoded=decoded, labels=labels), seed)


class ImageCollator:
    """Stacks images and makes ``M`` patch-grid masks per image. With ``mask.kind: multiblock`` the
    batch also holds ``target_masks`` (B * M, targets, L): each mask row's I-JEPA target blocks, its
    ``mask`` row being what lies outside the context block.

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
        multiblock = self.mask.kind == "multiblock"
        targets = np.zeros((len(masks), self.mask.targets if multiblock else 0, masks.shape[1]), dtype=bool)
        for i, e in enumerate(examples):
            rng = example_rng((*e["seed"], 1))  # stream 1: masks; the crop used the base stream
            for c in range(self.clones):
                row = i * self.clones + c
                if multiblock:
                    context, blocks = multiblock_mask(self.mask, self.cfg.grid, rng)
                    masks[row], targets[row] = ~context.reshape(-1), blocks.reshape(len(blocks), -1)
                else:
                    masks[row] = sample_mask(self.mask, self.cfg.grid, rng).reshape(-1)
        batch = {"inputs": {"pixel_values": pixels}, "mask": torch.from_numpy(masks)}
        if multiblock:
            batch["target_masks"] = torch.from_numpy(targets)
        return batch
