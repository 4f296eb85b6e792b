"""I-JEPA (Assran et al. 2023, "Self-Supervised Learning from Images with a Joint-Embedding Predictive
Architecture", arXiv 2301.08243): from one context block of an image, a narrow predictor predicts the
target encoder's representations of several target blocks of the same image. No views, no pixels.

- The data side draws the blocks (``mask.kind: multiblock``): per image a square context block
  (scale 0.85-1.0) and M target blocks (M = 4, scale 0.15-0.2, aspect 0.75-1.5), the target patches
  removed from the context. The batch holds ``mask`` (B, L), True outside the context, and
  ``target_masks`` (B, M, L), True on each target block.
- The context encoder (the student ``encoder``) sees only the context patches (and CLS, which the
  ViT layout has; the paper's encoder has none).
- The target encoder is the EMA teacher of the whole encoder, on the full image; its momentum rises
  linearly from 0.996 to 1.0 over the run (the paper's appendix A.1).
- The predictor, once per target block: the context tokens projected to its width with the sin-cos
  positions of their patches, and a learned mask token with the positions of the block's patches,
  through a few pre-LN blocks, projected back to the encoder's width at the mask tokens.
- The loss (:func:`~multissl.core.losses.ijepa.ijepa_loss`) is between the predictions and the
  target encoder's layer-normalised outputs at the real target patches of every block
  (``target_norm: instance`` first normalises them per feature over each image's patches).

The method needs of its modality a patch grid (``patch_grid()``); it never asks which modality it runs
on. Both encoders export as the modality's class (``ViTModel``); the paper evaluates the target
encoder, mean-pooled: what ``multissl export RUN OUT`` writes for this objective by default, unless
``export: student`` chooses the context encoder.

>>> model = IJEPA(vision_adapter, EncoderConfig(), IJEPAConfig())  # doctest: +SKIP
>>> model(**collator(examples))["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from multissl.core.adapter import PARTS, Modality, StudentView
from multissl.core.blocks import Blocks, EncoderConfig
from multissl.core.distributed import global_mean
from multissl.core.ema import EMAConfig
from multissl.core.encoder import extend_padding, gather_kept, mean_over
from multissl.core.health import compute_var, effective_rank
from multissl.core.init import BERT_STD, bert_init
from multissl.core.losses.ijepa import ijepa_loss
from multissl.core.positions import sincos_2d
from multissl.core.targets import instance_norm
from multissl.methods.base import Method


@dataclass
class PredictorConfig:
    """Shape of I-JEPA's predictor, a narrow ViT; the defaults are the paper's for a ViT-B/16 encoder
    (appendix A.1: width 384, depth 6, as many heads as the encoder; MLP ratio 4 in the released code)."""

    dim: int = 384
    """Predictor width; a multiple of 4 for the sin-cos positions."""

    depth: int = 6
    """Number of pre-LN blocks (the paper: 6 for ViT-B, 12 for ViT-L and ViT-H, 16 for ViT-G)."""

    heads: int = 12
    """Attention heads (the paper keeps the encoder's count)."""

    ffn_dim: int = 1536
    """Hidden size of the feed-forward layers."""

    eps: float = 1e-6
    """LayerNorm epsilon."""

    def validate(self, where: str = "method.predictor") -> None:
        for key in ("dim", "depth", "heads", "ffn_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")
        if self.dim % self.heads:
            raise ValueError(f"{where}.dim ({self.dim}) must be divisible by {where}.heads ({self.heads})")
        if self.dim % 4:
            raise ValueError(f"{where}.dim ({self.dim}) must be a multiple of 4 for sin-cos positions")
        if not self.eps > 0:
            raise ValueError(f"{where}.eps must be > 0, got {self.eps}")

    def blocks(self) -> EncoderConfig:
        """The pre-LN block stack (no dropout, no layer scale)."""
        return EncoderConfig(dim=self.dim, depth=self.depth, heads=self.heads, ffn_dim=self.ffn_dim, norm="pre",
                             eps=self.eps, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def _ijepa_ema() -> EMAConfig:
    return EMAConfig(decay=0.996, end_decay=1.0, anneal_fraction=1.0, shape="linear")


@dataclass
class IJEPAConfig:
    """I-JEPA: a context block predicts the EMA target encoder's representations of target blocks;
    which blocks, and how many, is the ``mask`` section's (``kind: multiblock``)."""

    name: Literal["ijepa"] = "ijepa"
    """The objective."""

    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    """The predictor (a narrow ViT)."""

    loss: Literal["smooth_l1", "l2"] = "smooth_l1"
    """smooth_l1: smooth-L1 (beta 1) averaged over patches and features, what the released code trains
    with; l2: the squared L2 distance averaged over patches, the paper's equation."""

    ema: EMAConfig = field(default_factory=_ijepa_ema)
    """Target-encoder momentum: 0.996 rising linearly to 1.0 over the whole run (the paper's)."""

    target_norm: Literal["layer", "instance"] = "layer"
    """layer: the target encoder's outputs layer-normalised per patch (the paper's); instance: first
    normalised per feature over each image's patches (data2vec 2.0's targets), then layer-normalised, so
    that what every patch of an image shares cannot be predicted without looking at the context."""

    export: Literal["teacher", "student"] = "teacher"
    """The encoder ``multissl export`` writes by default: teacher, the target encoder (the one the paper
    evaluates), or student, the context encoder (``--which`` chooses for one export)."""

    def validate(self, where: str = "method") -> None:
        if self.loss not in ("smooth_l1", "l2"):
            raise ValueError(f"{where}.loss must be smooth_l1 or l2, got {self.loss!r}")
        if self.target_norm not in ("layer", "instance"):
            raise ValueError(f"{where}.target_norm must be layer or instance, got {self.target_norm!r}")
        if self.export not in ("teacher", "student"):
            raise ValueError(f"{where}.export must be teacher or student, got {self.export!r}")
        self.predictor.validate(f"{where}.predictor")
        self.ema.validate(f"{where}.ema")


def selected_positions(select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions of the True entries of each row of ``select`` (N, L), in ascending order, as
    (indices (N, K), padding (N, K)) with K the most any row selects; a shorter row is padded with
    unselected positions, marked True in the padding. The order is :func:`gather_kept`'s.

    >>> selected_positions(torch.tensor([[False, True, True], [True, False, False]]))
    (tensor([[1, 2],
            [0, 1]]), tensor([[False, False],
            [False,  True]]))
    """
    count = int(select.sum(1).max()) if select.numel() else 0
    order = torch.argsort((~select).to(torch.int8), dim=1, stable=True)[:, :count]
    return order, ~select.gather(1, order)


class Predictor(nn.Module):
    """I-JEPA's predictor over a ``grid`` of (rows, columns) patches: ``embed`` (encoder width to its
    own), a learned ``mask_token``, fixed 2-D sin-cos ``positions`` of the grid at its width (a
    non-persistent buffer), pre-LN ``blocks``, ``norm``, and ``proj`` back to the encoder width.

    >>> p = Predictor(PredictorConfig(dim=16, depth=1, heads=2, ffn_dim=32), enc_dim=24, grid=(2, 2))
    >>> at = torch.tensor([[0, 1]])
    >>> p(torch.randn(1, 2, 24), torch.zeros(1, 2, dtype=torch.bool), at, at + 2, at < 0).shape
    torch.Size([1, 2, 24])
    """

    def __init__(self, cfg: PredictorConfig, enc_dim: int, grid: tuple[int, int]):
        super().__init__()
        cfg.validate("predictor")
        self.cfg = cfg
        self.embed = nn.Linear(enc_dim, cfg.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.register_buffer("positions", sincos_2d(grid[0], grid[1], cfg.dim), persistent=False)
        self.blocks = Blocks(cfg.blocks())
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.proj = nn.Linear(cfg.dim, enc_dim)
        self.apply(bert_init)  # N(0, 0.02) Linear weights and mask token, zero biases (the released code truncates)
        nn.init.normal_(self.mask_token, std=BERT_STD)

    def forward(self, context: torch.Tensor, context_pad: torch.Tensor, context_at: torch.Tensor,
                target_at: torch.Tensor, target_pad: torch.Tensor) -> torch.Tensor:
        """Predictions (N, T, enc_dim) at the T target positions of each of N rows.

        ``context`` (N, K, enc_dim) is the context encoder's output at each row's context patches,
        ``context_at`` (N, K) their grid positions and ``context_pad`` (N, K) True on padding;
        ``target_at`` (N, T) are the positions to predict and ``target_pad`` (N, T) True on padding.
        """
        x = self.embed(context) + self.positions[context_at].to(context.dtype)
        queries = self.mask_token.to(x.dtype) + self.positions[target_at].to(x.dtype)
        x, _, _ = self.blocks(torch.cat([x, queries], 1), torch.cat([context_pad, target_pad], 1))
        return self.proj(self.norm(x[:, context.shape[1]:]))


class IJEPA(Method):
    """The context encoder, its EMA target encoder and the predictor; ``forward(inputs, mask,
    target_masks)`` takes the collator's batch: the images, ``mask`` (B, L) True outside each image's
    context block and ``target_masks`` (B, M, L) True on each of its M target blocks."""

    evaluated_encoder = "teacher"  # the paper evaluates the target encoder

    name = "ijepa"
    config_class = IJEPAConfig

    @classmethod
    def student_view(cls, cfg: IJEPAConfig) -> StudentView:
        return StudentView(dense=False)

    @classmethod
    def check(cls, cfg: IJEPAConfig, encoder: EncoderConfig, mask: Any) -> None:
        if mask.kind != "multiblock":
            raise ValueError(f"method ijepa needs mask.kind multiblock (a context block and target blocks), "
                             f"got {mask.kind!r}")

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: IJEPAConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        grid = modality.patch_grid()
        if grid is None:
            raise ValueError(f"method ijepa predicts blocks of a patch grid: modality {modality.name!r} has none")
        self.predictor = Predictor(cfg.predictor, encoder.dim, grid.grid)
        # the target encoder: an average of the whole encoder, patch embedding included
        self.init_teacher(PARTS, modality.teacher_sharing(dense=False)[1], cfg.ema, run_steps)

    def encode_context(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The context encoder on the patches outside ``mask`` (B, L) only: (its output at those
        patches (B, K, D), in grid order, their padding (B, K), the context (B, L) as bool)."""
        enc, e = self.encoder, self.encoder.num_extra
        feats, pad = enc.local(inputs)
        mask = mask.bool() | pad
        x = enc.context(feats, pad, mask)
        x, xpad, keep = gather_kept(x, extend_padding(pad, e), mask, e)
        x, _, _ = enc.blocks(x, xpad)
        x = enc.norm(x)
        return x[:, e:], xpad[:, e:], keep

    def predict(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor, target_masks: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """Every piece of the loss: ``pred`` and ``target`` (P, D), the predictions and the target
        encoder's outputs (instance-normalised if ``target_norm`` says so, not yet layer-normalised) at
        the P real target patches of every block, in the order (image, block, patch in grid order);
        ``context`` (B, K, D) and ``context_pad``, the context encoder's output; ``teacher`` (B, L, D)
        and ``teacher_pad``, the target encoder's (before any normalisation)."""
        e, m = self.encoder.num_extra, target_masks.shape[1]
        teacher, teacher_pad = self.teacher_encode(inputs)
        teacher, teacher_pad = teacher[:, e:], teacher_pad[:, e:]
        context, context_pad, keep = self.encode_context(inputs, mask)
        context_at, _ = selected_positions(keep)
        targets = (target_masks.bool() & ~teacher_pad[:, None]).flatten(0, 1)  # (B * M, L): a row per block
        target_at, target_pad = selected_positions(targets)

        def per_block(x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(m, 0)

        pred = self.predictor(per_block(context), per_block(context_pad), per_block(context_at), target_at,
                              target_pad)
        regressed = instance_norm(teacher, teacher_pad) if self.cfg.target_norm == "instance" else teacher
        target = per_block(regressed).gather(1, target_at[..., None].expand(-1, -1, teacher.shape[-1]))
        real = ~target_pad
        return {"pred": pred[real], "target": target[real], "context": context, "context_pad": context_pad,
                "teacher": teacher, "teacher_pad": teacher_pad}

    def forward(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor, target_masks: torch.Tensor | None = None,
                **_: object) -> dict[str, torch.Tensor]:
        if target_masks is None:
            raise ValueError("method ijepa needs the batch's target_masks: set mask.kind multiblock")
        out = self.predict(inputs, mask, target_masks)
        pred, target = out["pred"], out["target"]
        count = pred.shape[0]
        loss = global_mean(ijepa_loss(pred, target, self.cfg.loss) * count, count)
        normed = F.layer_norm(target.float(), (target.shape[-1],))  # what the predictor regresses
        return {"loss": loss, "target_var": compute_var(normed), "pred_var": compute_var(pred),
                "student_rank": effective_rank(mean_over(out["context"], out["context_pad"])),
                "teacher_rank": effective_rank(mean_over(out["teacher"], out["teacher_pad"]))}

    def exported_encoder(self) -> str:
        return self.cfg.export

    @classmethod
    def card_tags(cls, cfg: IJEPAConfig) -> list[str]:
        return ["ijepa", "jepa"]

    @classmethod
    def card_title(cls, cfg: IJEPAConfig) -> str:
        return "I-JEPA"

    @classmethod
    def card_objective(cls, cfg: IJEPAConfig, mask: Any) -> str:
        p = cfg.predictor
        norm = ("targets normalised per feature over each image's patches, then per patch"
                if cfg.target_norm == "instance" else "targets normalised per patch")
        which = "target encoder" if cfg.export == "teacher" else "context encoder"
        return (f"I-JEPA: a context block (scale {mask.context_scale[0]}-{mask.context_scale[1]}) predicts, through "
                f"a {p.depth}-block predictor of width {p.dim}, the EMA target encoder's representations of "
                f"{mask.targets} target blocks (scale {mask.target_scale[0]}-{mask.target_scale[1]}, aspect "
                f"{mask.target_aspect[0]}-{mask.target_aspect[1]}), {norm}; the paper evaluates the target "
                f"encoder, mean-pooled; `multissl export` writes the {which} by default")
