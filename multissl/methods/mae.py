"""Masked autoencoders (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners", arXiv
2111.06377): a fixed share of the patches (75% in the paper) is dropped; the encoder sees only the
visible ones (and CLS); a light decoder fills the masked positions with a shared mask token and
predicts their pixels; the loss is the mean squared error over the masked patches, on per-patch
normalised pixels by default. No teacher.

The method needs of its modality a patch grid (``patch_grid()``) and ``token_signal`` (the pixels of
each patch, in ViTMAE's patch order); it never asks which modality it runs on. The export is the
encoder (``ViTModel``), and beside it, in ``pretraining/``, the whole model as
``ViTMAEForPreTraining`` (same weights, same loss for the same masking).

>>> model = MAE(vision_adapter, EncoderConfig(), MAEConfig())  # doctest: +SKIP
>>> model(**collator(examples))["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from multissl.core.adapter import Modality, PatchGrid, StudentView
from multissl.core.blocks import EncoderConfig
from multissl.core.distributed import global_mean
from multissl.core.encoder import extend_padding, gather_kept, mean_over
from multissl.core.health import compute_var, effective_rank
from multissl.core.losses.mae import NORM_PIX_EPS, mae_loss, unpatchify
from multissl.core.mae_decoder import MAEDecoder, MAEDecoderConfig, to_hf_decoder_state
from multissl.methods.base import Method

FIXED_COUNT_KINDS = ("random", "block", "inverse_block")
"""Mask kinds that mask the same number of patches in every image (MAE drops them, so every row of
the encoder's batch must keep the same count)."""


@dataclass
class MAEConfig:
    """The masked autoencoder; which patches are dropped, and how many, is the ``mask`` section's."""

    name: Literal["mae"] = "mae"
    """The objective."""

    norm_pix: bool = True
    """Regress each masked patch's pixels normalised by that patch's own mean and variance (the
    paper's Table 1c; ``ViTMAEConfig.norm_pix_loss``); False: the pixels as the adapter gives them."""

    decoder: MAEDecoderConfig = field(default_factory=MAEDecoderConfig)
    """The decoder (the paper's: 8 blocks of width 512, 16 heads). Its ``eps`` must equal
    ``encoder.eps``: ViTMAEForPreTraining has one LayerNorm epsilon."""

    def validate(self, where: str = "method") -> None:
        if not isinstance(self.norm_pix, bool):
            raise ValueError(f"{where}.norm_pix must be true or false, got {self.norm_pix!r}")
        self.decoder.validate(f"{where}.decoder")


def _patch_grid(modality: Modality) -> PatchGrid:
    grid = modality.patch_grid()
    if grid is None:
        raise ValueError(f"method mae rebuilds image patches: modality {modality.name!r} has no patch grid")
    return grid


class MAE(Method):
    """The encoder and the MAE decoder; ``forward(inputs, mask)`` takes the collator's batch: the
    images and ``mask`` (B, L), True on the patches to drop and reconstruct (the same count per row)."""

    name = "mae"
    config_class = MAEConfig

    @classmethod
    def student_view(cls, cfg: MAEConfig) -> StudentView:
        return StudentView(dense=False)

    @classmethod
    def check(cls, cfg: MAEConfig, encoder: EncoderConfig, mask: Any) -> None:
        if mask.kind not in FIXED_COUNT_KINDS:
            raise ValueError(f"method mae needs mask.kind {' / '.join(FIXED_COUNT_KINDS)} (the same number of "
                             f"masked patches in every image), got {mask.kind!r}")
        if not mask.prob > 0:
            raise ValueError(f"method mae needs mask.prob > 0 (the masked patches are the loss), got {mask.prob}")
        if cfg.decoder.eps != encoder.eps:
            raise ValueError(f"method.decoder.eps ({cfg.decoder.eps}) must equal encoder.eps ({encoder.eps}): "
                             "ViTMAEForPreTraining has one layer_norm_eps")

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: MAEConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        self.pixels = _patch_grid(modality)
        self.grid, self.patch, self.channels = self.pixels.grid, self.pixels.patch, self.pixels.channels
        self.decoder = MAEDecoder(cfg.decoder, encoder.dim, self.grid, self.patch, self.channels)
        self.modality = modality  # a plain attribute (not a module): the pixel targets and statistics

    def reconstruct(
        self, inputs: dict[str, torch.Tensor], mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pixel predictions (N, L, P) for every patch, the encoder output of CLS and the kept
        patches (N, 1 + K, D), its padding, the mask (N, L) as bool)."""
        enc, e = self.encoder, self.encoder.num_extra
        feats, pad = enc.local(inputs)
        mask = mask.bool() & ~pad
        x = enc.context(feats, pad, mask)
        x, xpad, keep = gather_kept(x, extend_padding(pad, e), mask, e)
        x, _, _ = enc.blocks(x, xpad)
        x = enc.norm(x)
        return self.decoder(x, keep), x, xpad, mask

    def forward(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor, **_: object) -> dict[str, torch.Tensor]:
        pred, x, xpad, mask = self.reconstruct(inputs, mask)
        target = self.modality.token_signal(inputs, pred.shape[1])
        count = int(mask.sum())
        loss = global_mean(mae_loss(pred, target, mask, self.cfg.norm_pix) * count, count)
        e = self.encoder.num_extra
        return {"loss": loss, "pred_var": compute_var(pred[mask]),
                "student_rank": effective_rank(mean_over(x[:, e:], xpad[:, e:]))}

    @staticmethod
    def hf_mask_ratio(prob: float, length: int) -> float:
        """The ``mask_ratio`` under which ViTMAE keeps as many of ``length`` patches as masking with
        ``prob`` does (ViTMAE keeps ``int(length * (1 - mask_ratio))``)."""
        ratio = prob
        masked = round(ratio * length)
        if int(length * (1 - ratio)) != length - masked:  # float rounding: aim between two counts
            ratio = (masked - 0.5) / length
        return ratio

    def hf_pretraining(self, mask: Any) -> Any:
        """``ViTMAEForPreTraining`` with this model's weights: the encoder under ``vit.`` (the adapter's
        HF names, its position table included: multissl's sin-cos table has its row and column halves
        in the other order than ViTMAE's, and the export writes multissl's, so the encoder computes
        exactly what it computed here), the decoder under ``decoder.``."""
        from transformers import ViTMAEConfig, ViTMAEForPreTraining

        enc, d = self.encoder.cfg, self.cfg.decoder
        vit = self.modality.hf_config(enc)
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps", "image_size", "patch_size",
                "num_channels", "qkv_bias")
        config = ViTMAEConfig(**{k: getattr(vit, k) for k in keys}, decoder_hidden_size=d.dim,
                              decoder_num_hidden_layers=d.depth, decoder_num_attention_heads=d.heads,
                              decoder_intermediate_size=d.ffn_dim, norm_pix_loss=self.cfg.norm_pix,
                              mask_ratio=self.hf_mask_ratio(mask.prob, self.grid[0] * self.grid[1]))
        model = ViTMAEForPreTraining(config)
        encoder = self.modality.to_hf_state_dict(self.encoder.state_dict(), enc)
        decoder = to_hf_decoder_state(self.decoder.state_dict(), d, self.grid)
        state = {f"vit.{k}": v for k, v in encoder.items()} | {f"decoder.{k}": v for k, v in decoder.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"ViTMAEForPreTraining does not fit: missing {missing[:4]}, unexpected {unexpected[:4]}")
        return model.eval()

    @torch.no_grad()
    def snapshot(self, batch: dict[str, Any], folder: Path, step: int) -> None:
        """``reconstruction-{step}.png``: a row per image (8 at most), columns original / masked (the
        dropped patches grey) / reconstruction (the predicted patches where masked, the visible ones as
        given, as the MAE demo's "reconstruction + visible"). With ``norm_pix`` each prediction is put
        back at its true patch's mean and variance, as the demo does."""
        from PIL import Image

        device = next(self.parameters()).device
        inputs = {k: v[:8].to(device) for k, v in batch["inputs"].items()}
        mask = batch["mask"][:8].to(device)
        pred = self.reconstruct(inputs, mask)[0].float()
        mask = mask.bool()
        target = self.modality.token_signal(inputs, pred.shape[1])
        if self.cfg.norm_pix:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + NORM_PIX_EPS) ** 0.5 + mean
        m = mask[..., None]
        shown = [target, torch.where(m, torch.full_like(target, float("nan")), target), torch.where(m, pred, target)]
        c = self.channels
        mean = torch.tensor(self.pixels.mean, device=device).view(1, c, 1, 1)
        std = torch.tensor(self.pixels.std, device=device).view(1, c, 1, 1)
        cols = []
        for patches in shown:
            img = unpatchify(patches, self.grid, self.patch) * std + mean  # back to [0, 1]
            cols.append(img.nan_to_num(0.5).clamp(0, 1))
        grid = torch.cat([torch.cat(list(col), 1) for col in cols], 2)  # (C, rows * H, 3 * W)
        pixels = (grid.permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
        image = Image.fromarray(pixels if c == 3 else pixels[..., 0], "RGB" if c == 3 else "L")
        scale = max(1, 64 // max(self.grid[0] * self.patch, 1))  # small images drawn at least 64 px a side
        if scale > 1:
            image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"reconstruction-{step}.png")

    @classmethod
    def card_tags(cls, cfg: MAEConfig) -> list[str]:
        return ["mae", "masked-autoencoder"]

    @classmethod
    def card_title(cls, cfg: MAEConfig) -> str:
        return "a masked autoencoder (MAE)"

    @classmethod
    def card_objective(cls, cfg: MAEConfig, mask: Any) -> str:
        d = cfg.decoder
        target = "per-patch normalised pixels" if cfg.norm_pix else "pixels"
        return (f"masked autoencoder: {mask.prob:.0%} of the patches dropped ({mask.kind}), a {d.depth}-block "
                f"decoder of width {d.dim} regresses their {target}")
