"""Vision adapter: patch embedding, a CLS token and learned absolute positions in front of pre-LN
blocks, laid out like ``ViTModel`` so that a trained encoder exports exactly.

Why ViT rather than Data2VecVision (BEiT): learned absolute positions are added to every patch
before masking, so the sparse data2vec 2.0 student simply keeps the positions of the patches it
keeps; BEiT's shared relative position bias would have to be re-gathered for every kept pair. ViT
is also the class most image tooling (``AutoModelForImageClassification``, timm conversions) expects.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from multissl.core.adapter import Modality, PatchGrid, StudentView
from multissl.core.blocks import EncoderConfig
from multissl.core.decoder import Decoder2d, DecoderConfig
from multissl.core.hf_names import from_hf_names, to_hf_names
from multissl.core.positions import sincos_2d
from multissl.data.views import ViewCollator
from multissl.modalities.vision.views import ImageViews, VisionViews

# multissl block tensor -> ViT layer module
HF_BLOCK_NAMES = {
    "q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj", "out": "attention.o_proj",
    "norm1": "layernorm_before", "fc1": "mlp.fc1", "fc2": "mlp.fc2", "norm2": "layernorm_after",
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
EXAMPLE_IMAGE = Path(__file__).resolve().parents[2] / "assets" / "photo.png"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class VisionConfig:
    """Image-specific settings: the patch grid, the pixel statistics and the training crop."""

    image_size: int = 224
    """Side of the square input."""

    patch_size: int = 16
    """Side of a square patch."""

    channels: int = 3
    """Input channels (images are converted to RGB)."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Per-channel mean subtracted after scaling pixels to [0, 1] (ImageNet's)."""

    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    """Per-channel std divided by (ImageNet's)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    """Random resized crop: the range of the crop's share of the image area (training)."""

    flip: bool = True
    """Random horizontal flip (training)."""

    min_side: int = 8
    """Images with a side shorter than this are skipped as unusable."""

    mask_embedding: bool | None = None
    """Learned vector for masked patches; None: yes for v1 (dense student), no for v2 (sparse)."""

    positions: Literal["sincos", "learned"] = "sincos"
    """sincos: fixed 2-D sine-cosine positions, not trained (data2vec 2.0 and MAE); learned: a table
    initialised from N(0, 0.02) and trained (ViT). Both export as ViTModel's position table."""

    def validate(self, where: str = "vision") -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"{where}.image_size ({self.image_size}) must be a multiple of {where}.patch_size "
                             f"({self.patch_size})")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"{where}.crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if self.positions not in ("sincos", "learned"):
            raise ValueError(f"{where}.positions must be sincos or learned, got {self.positions!r}")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side


class VisionLocal(nn.Module):
    """Pixels (B, C, H, W) -> patch embeddings (B, N, D) (no padding in images)."""

    def __init__(self, cfg: VisionConfig, enc: EncoderConfig):
        super().__init__()
        self.projection = nn.Conv2d(cfg.channels, enc.dim, cfg.patch_size, stride=cfg.patch_size)
        w = self.projection.weight  # the reference: Xavier as for a Linear on the flattened patch
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        self.mask_embedding = nn.Parameter(torch.zeros(enc.dim).normal_(std=0.02)) if cfg.mask_embedding else None

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.projection(inputs["pixel_values"]).flatten(2).transpose(1, 2)
        return x, torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)


class VisionContext(nn.Module):
    """Positions added to the patches, and a CLS token (with its own position) in front. An input of
    another size than ``image_size`` (a local crop) gets the position table resized to its grid,
    bicubic, as ``ViTModel(..., interpolate_pos_encoding=True)`` does, so that an export computes
    the same at any size. Sine-cosine tables are resized too: a crop is seen as a whole image at a
    lower resolution, its patches spread over the full range of positions."""

    def __init__(self, cfg: VisionConfig, enc: EncoderConfig):
        super().__init__()
        n = cfg.grid[0] * cfg.grid[1]
        # data2vec 2.0 draws its extra token from N(0, 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, enc.dim).normal_())
        if cfg.positions == "sincos":
            table = torch.cat([torch.zeros(1, enc.dim), sincos_2d(*cfg.grid, enc.dim)])[None]
            self.position_embeddings = nn.Parameter(table, requires_grad=False)
        else:
            self.position_embeddings = nn.Parameter(torch.zeros(1, n + 1, enc.dim).normal_(std=0.02))
        self.dropout = nn.Dropout(enc.dropout)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return self.dropout(torch.cat([cls, x], 1) + self.positions(x.shape[1]))

    def positions(self, patches: int) -> torch.Tensor:
        """The position table (1, 1 + patches, D) for a square grid of ``patches`` patches."""
        table = self.position_embeddings
        if patches == table.shape[1] - 1:
            return table
        side, old = math.isqrt(patches), math.isqrt(table.shape[1] - 1)
        if side * side != patches:
            raise ValueError(f"vision: {patches} patches do not make a square grid")
        grid = table[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        return torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, patches, -1)], 1)


class Vision(Modality):
    name = "vision"
    config_class = VisionConfig
    views_class = VisionViews
    input_extensions = IMAGE_EXTENSIONS
    item_view = "image"
    num_extra_tokens = 1

    def build_local(self, enc: EncoderConfig) -> nn.Module:
        return VisionLocal(self.cfg, enc)

    def build_context(self, enc: EncoderConfig) -> nn.Module:
        return VisionContext(self.cfg, enc)

    def build_decoder(self, cfg: DecoderConfig, dim: int) -> nn.Module:
        return Decoder2d(cfg, dim, self.cfg.grid)

    def patch_grid(self) -> PatchGrid:
        c = self.cfg
        return PatchGrid(tuple(c.grid), c.patch_size, c.channels, tuple(c.mean), tuple(c.std))

    def token_signal(self, inputs: dict[str, Any], tokens: int) -> torch.Tensor:
        """The pixels of each patch (B, N, patch * patch * C), in ``ViTMAEForPreTraining.patchify``'s order."""
        from multissl.core.losses import patchify

        return patchify(inputs["pixel_values"].float(), self.cfg.patch_size)

    def teacher_sharing(self, dense: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
        # The teacher is the whole encoder, patch embedding included, on the unmasked image.
        return (), ()

    def prepare(self, data: Any, mask: Any, seed: int, view: StudentView, views: Any = None) -> tuple[Any, Any, Any]:
        from multissl.modalities.vision.data import ImageCollator, build_image_dataset

        if self.cfg.mask_embedding is None:
            self.cfg.mask_embedding = view.dense
        if view.views:
            maker = ImageViews(views or VisionViews(), self.cfg)
            collator = ViewCollator(maker, mask if view.view_masks else None)
            return build_image_dataset(data, self.cfg, seed, decoded=True), collator, self.image_processor()
        dataset = build_image_dataset(data, self.cfg, seed)
        return dataset, ImageCollator(mask, self.cfg, view.clones), self.image_processor()

    def image_processor(self):
        """The HF image processor whose output equals multissl's evaluation transform."""
        from transformers import ViTImageProcessorPil

        s = self.cfg.image_size
        return ViTImageProcessorPil(do_resize=True, size={"height": s, "width": s}, resample=3, do_rescale=True,
                                    rescale_factor=1 / 255, do_normalize=True, image_mean=list(self.cfg.mean),
                                    image_std=list(self.cfg.std), do_convert_rgb=True)

    def hf_config(self, enc: EncoderConfig, arch: str | None = None):
        from transformers import ViTConfig

        if arch not in (None, "vit"):
            raise ValueError(f"--arch: image encoders export as vit, not {arch!r}")
        if enc.norm != "pre" or enc.layer_scale:
            raise ValueError("encoder: ViTModel holds pre-LN encoders without layer scale")
        c = self.cfg
        return ViTConfig(hidden_size=enc.dim, num_hidden_layers=enc.depth, num_attention_heads=enc.heads,
                         intermediate_size=enc.ffn_dim, hidden_act="gelu", hidden_dropout_prob=enc.dropout,
                         attention_probs_dropout_prob=enc.attention_dropout, layer_norm_eps=enc.eps,
                         image_size=c.image_size, patch_size=c.patch_size, num_channels=c.channels, qkv_bias=True)

    @classmethod
    def load_preprocessor(cls, folder: str | Path):
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(str(folder))

    @classmethod
    def holds_preprocessor(cls, folder: Path) -> bool:
        path = folder / "preprocessor_config.json"
        return path.is_file() and "image_processor_type" in json.loads(path.read_text())

    @classmethod
    def probe_features(cls, model: nn.Module, preprocessor: Any, inputs: list[Any], pool: str = "mean") -> np.ndarray:
        """Every hidden state pooled: the mean over patches, or the CLS token (``pool="cls"``):
        (images, layers + 1, D)."""
        from multissl.modalities.vision.data import Picture

        rows = []
        with torch.no_grad():
            for i in range(0, len(inputs), 64):
                images = [Picture(p).open() for p in inputs[i:i + 64]]
                pixels = preprocessor(images, return_tensors="pt").to(model.device)
                states = model(**pixels, output_hidden_states=True).hidden_states
                if pool == "cls":
                    rows.append(torch.stack([h[:, 0] for h in states], 1).float().cpu().numpy())
                else:
                    rows.append(torch.stack([h[:, 1:].mean(1) for h in states], 1).float().cpu().numpy())
        return np.concatenate(rows)

    @classmethod
    def preview(cls, item: str) -> tuple[bytes, str]:
        """A PNG thumbnail (at most 256 pixels a side) of any image the data readers accept."""
        import io

        from multissl.modalities.vision.data import Picture

        img = Picture(item).open()
        img.thumbnail((256, 256))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue(), "image/png"

    def example_inputs(self, preprocessor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The shipped photo and its mirror image, through the exported processor."""
        from PIL import Image, ImageOps

        img = Image.open(EXAMPLE_IMAGE).convert("RGB")
        proc = preprocessor or self.image_processor()
        pixels = proc([img, ImageOps.mirror(img)], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels}, {"pixel_values": pixels}

    def to_hf_state_dict(self, state: dict[str, torch.Tensor], enc: EncoderConfig) -> dict[str, torch.Tensor]:
        return to_hf_names(state, HF_NAMES, HF_BLOCK_NAMES, "layers.", enc.depth)

    def from_hf(self, folder: str) -> tuple[EncoderConfig, dict[str, torch.Tensor]]:
        """Read a ``ViTModel`` folder (or a task model built on one, e.g. ViTForImageClassification)."""
        from transformers import AutoConfig, AutoModel

        hf = AutoConfig.from_pretrained(folder)
        if hf.model_type != "vit":
            raise ValueError(f"{folder}: model_type {hf.model_type!r} is not vit")
        if hf.hidden_act != "gelu" or not hf.qkv_bias:
            raise ValueError(f"{folder}: only gelu activations and biased q/k/v are supported")
        sd = AutoModel.from_pretrained(folder, add_pooling_layer=False).state_dict()  # current key names
        enc = EncoderConfig(dim=hf.hidden_size, depth=hf.num_hidden_layers, heads=hf.num_attention_heads,
                            ffn_dim=hf.intermediate_size, norm="pre", eps=hf.layer_norm_eps,
                            dropout=hf.hidden_dropout_prob, attention_dropout=hf.attention_probs_dropout_prob)
        self.cfg.image_size, self.cfg.patch_size, self.cfg.channels = hf.image_size, hf.patch_size, hf.num_channels
        self.cfg.positions = "learned"  # an imported position table goes on training
        state = from_hf_names(sd, HF_NAMES, HF_BLOCK_NAMES, "layers.", enc.depth, folder)
        return enc, state


# multissl key -> ViTModel key, outside the transformer blocks
HF_NAMES = {
    "local.projection.weight": "embeddings.patch_embeddings.projection.weight",
    "local.projection.bias": "embeddings.patch_embeddings.projection.bias",
    "context.cls_token": "embeddings.cls_token",
    "context.position_embeddings": "embeddings.position_embeddings",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
