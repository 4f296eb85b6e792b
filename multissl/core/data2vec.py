"""The data2vec teacher-student model, for any modality adapter.

v1: the student encodes the whole (masked) input densely; a regression head predicts the targets.
v2: the student encodes only the unmasked tokens of M masked clones of each sample; a light conv
decoder fills the masked positions (noise in, predictions out); the teacher runs once per sample.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from multissl.core.blocks import Blocks, EncoderConfig
from multissl.core.decoder import DecoderConfig, projection
from multissl.core.distributed import global_mean
from multissl.core.ema import EMA, EMAConfig, annealed_decay
from multissl.core.health import compute_var, effective_rank, position_share
from multissl.core.init import bert_init, reference_init
from multissl.core.losses import regression_loss
from multissl.core.targets import TargetNorm, build_targets, center_positions
from multissl.modalities.base import PARTS, Modality


@dataclass
class Data2VecConfig:
    """The teacher-student objective."""

    version: Literal[1, 2] = 2
    """1: dense student with a regression head; 2: sparse student, conv decoder, multi-mask."""

    clones: int = 1
    """M: masked clones of each sample, sharing one teacher pass (data2vec 2.0 multi-mask)."""

    top_k: int = 8
    """Number of top teacher layers averaged into the target."""

    target: Literal["ffn", "block"] = "ffn"
    """ffn: each layer's feed-forward output before its residual; block: the block's output."""

    target_norm: TargetNorm = "instance"
    """Parameter-free norm applied to each layer before averaging."""

    final_norm: TargetNorm = "none"
    """Parameter-free norm applied to the average."""

    center_positions: bool = False
    """Subtract from each target the batch's mean target at its position (after ``final_norm``), so
    that what the position alone predicts is not part of the target; ``target_pos_share`` in the logs
    is the share of the target variance the position explains before this step."""

    loss_beta: float = 0.0
    """0: L2 loss; > 0: smooth-L1 with this beta."""

    loss_scale: float | None = None
    """Loss multiplier; None means 1/sqrt(D)."""

    head_layers: int = 1
    """v1 regression head: 1 Linear, or 2 (Linear -> GELU -> Linear)."""

    cls_loss: float = 0.0
    """Weight of a loss between the student's final first extra token (CLS) and the mean of the
    sample's targets (data2vec 2.0 images: 0.01); 0 disables it. As in the reference, the term is
    the weight times the *sum* over the device's batch (clones included) of the per-sample loss,
    added to the mean over masked tokens of the patch loss."""

    mask_noise_std: float = 0.01
    """v2: std of the noise that stands in for masked tokens at the decoder input."""

    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    """v2 decoder."""

    ema: EMAConfig = field(default_factory=EMAConfig)
    """Teacher decay schedule."""

    def validate(self, where: str = "method") -> None:
        if self.version not in (1, 2):
            raise ValueError(f"{where}.version must be 1 or 2, got {self.version}")
        if self.clones < 1:
            raise ValueError(f"{where}.clones must be >= 1, got {self.clones}")
        if self.top_k < 1:
            raise ValueError(f"{where}.top_k must be >= 1, got {self.top_k}")
        if self.head_layers not in (1, 2):
            raise ValueError(f"{where}.head_layers must be 1 or 2, got {self.head_layers}")
        self.decoder.validate(f"{where}.decoder")
        self.ema.validate(f"{where}.ema")


class Encoder(nn.Module):
    """local -> context (positions, extra tokens) -> blocks -> norm (pre-LN stacks only)."""

    def __init__(self, modality: Modality, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.num_extra = modality.num_extra_tokens
        self.local = modality.build_local(cfg)
        self.context = modality.build_context(cfg)
        self.blocks = Blocks(cfg)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps) if cfg.norm == "pre" else nn.Identity()
        reference_init(self)

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """All hidden states (the block input, then each block's output) and the padding mask
        (B, E + T), as Hugging Face's ``output_hidden_states`` lays them out; the model's output is
        ``encoder.norm(states[-1])`` (the final LayerNorm of pre-LN stacks, identity for post-LN).

        Extra tokens (CLS) stay in, as they do in the HF classes.
        """
        feats, pad = self.local(inputs)
        x = self.context(feats, pad)
        pad = _extend(pad, self.num_extra)
        states = [x]
        for block in self.blocks:
            x, _ = block(x, pad)
            states.append(x)
        return states, pad


def _mean_over(x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """(B, T, D) averaged over each row's non-padding positions (True in ``pad`` is padding)."""
    valid = (~pad).unsqueeze(-1).to(x.dtype)
    return (x * valid).sum(1) / valid.sum(1).clamp_min(1)


def _extend(pad: torch.Tensor, n: int) -> torch.Tensor:
    """Padding mask with ``n`` non-padding extra tokens in front."""
    if n == 0:
        return pad
    return torch.cat([pad.new_zeros(pad.shape[0], n), pad], dim=1)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Run shared student modules without dropout for the teacher pass, then restore their mode."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


def gather_kept(
    x: torch.Tensor, pad: torch.Tensor, mask: torch.Tensor, extra: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop masked and padded tokens (extra tokens always stay). Returns the shorter sequence, its
    padding mask, and ``keep`` (N, T), True where a token was kept, for :func:`scatter_kept`."""
    body = x[:, extra:]
    keep = ~(mask | pad[:, extra:])
    n_keep = int(keep.sum(1).max())
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :n_keep]
    kept = body.gather(1, order.unsqueeze(-1).expand(-1, -1, body.shape[-1]))
    kept_pad = ~keep.gather(1, order)
    return torch.cat([x[:, :extra], kept], 1), torch.cat([pad[:, :extra], kept_pad], 1), keep


def scatter_kept(kept: torch.Tensor, kept_pad: torch.Tensor, keep: torch.Tensor, noise_std: float) -> torch.Tensor:
    """Put kept tokens back at their positions; every other position gets N(0, noise_std) noise."""
    n, t = keep.shape
    full = torch.randn(n, t, kept.shape[-1], device=kept.device, dtype=kept.dtype) * noise_std
    return full.index_put((keep,), kept[~kept_pad])


class Data2Vec(nn.Module):
    """Student encoder, EMA teacher, and the head (v1) or decoder (v2) that predicts the targets.

    ``forward(inputs, mask, student_inputs=None)`` takes the collator's batch: ``inputs`` the unmasked
    input of B samples (what the teacher sees), ``mask`` (B*M, T) True where the student is masked,
    ``student_inputs`` an optional different student input (text's <mask> tokens). It returns the
    loss and the health metrics. ``run_steps`` is the run's length in optimiser steps (for EMA
    schedules written against it).
    """

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: Data2VecConfig, run_steps: int = 0):
        super().__init__()
        self.cfg = cfg
        self.run_steps = run_steps
        self.encoder = Encoder(modality, encoder)
        if cfg.version == 1:
            self.head = projection(encoder.dim, encoder.dim, cfg.head_layers)
            self.head.apply(bert_init)  # the reference initialises the whole model, head included
        else:
            self.head = modality.build_decoder(cfg.decoder, encoder.dim)
        shared, self.copied = modality.ema_split(cfg.version)
        self.teacher = nn.ModuleDict({p: copy.deepcopy(getattr(self.encoder, p)) for p in PARTS if p not in shared})
        self.teacher.requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        # the product of the decays so far: the share of each averaged teacher weight that is still
        # its value at the start (the random init, or the imported weights)
        self.register_buffer("teacher_init_share", torch.ones((), dtype=torch.float32))
        self._ema: EMA | None = None

    # --- teacher -------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> Data2Vec:
        super().train(mode)
        self.teacher.eval()
        return self

    def _teacher_part(self, name: str) -> nn.Module:
        return self.teacher[name] if name in self.teacher else getattr(self.encoder, name)

    def reset_teacher(self) -> None:
        """Make the teacher an exact copy of the student (after loading student weights)."""
        with torch.no_grad():
            for name, module in self.teacher.items():
                module.load_state_dict(getattr(self.encoder, name).state_dict())
        self._ema = None

    def ema_step(self, step: int | None = None) -> float:
        """One EMA update with the decay scheduled for optimiser step ``step`` (0-based; default: the
        count of EMA updates so far); call it after each real optimiser update."""
        if self._ema is None:
            student = nn.ModuleDict({n: getattr(self.encoder, n) for n in self.teacher})  # a view, not registered
            self._ema = EMA([(student, self.teacher)], copied=self.copied)
        decay = annealed_decay(int(self.ema_updates) if step is None else step, self.cfg.ema, self.run_steps)
        self._ema.step(decay)
        self.ema_updates += 1
        if decay < 1.0:
            self.teacher_init_share *= decay
        return decay

    def compile_blocks(self) -> None:
        """``torch.compile`` every transformer block, the student's and the teacher's (in place: the
        state dict keeps its names)."""
        for blocks in (self.encoder.blocks, self.teacher["blocks"] if "blocks" in self.teacher else []):
            for block in blocks:
                block.compile(dynamic=True)

    def teacher_encoder(self) -> Encoder:
        """A stand-alone encoder with the teacher's weights (shared parts taken from the student)."""
        enc = copy.deepcopy(self.encoder)
        for name, module in self.teacher.items():
            getattr(enc, name).load_state_dict(module.state_dict())
        return enc

    @torch.no_grad()
    def targets(
        self, inputs: dict[str, torch.Tensor], local_out: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Teacher targets (B, T, D) in fp32 for the unmasked ``inputs``; ``local_out`` reuses the
        student's local features when the teacher shares its local encoder."""
        return self._teacher(inputs, local_out)[0]

    @torch.no_grad()
    def _teacher(
        self, inputs: dict[str, torch.Tensor], local_out: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(targets (B, T, D), padding mask (B, T), the teacher's output mean-pooled over each sample's
        tokens (B, D))."""
        shared = [getattr(self.encoder, p) for p in PARTS if p not in self.teacher]
        with eval_mode(*shared):
            feats, pad = self._teacher_part("local")(inputs) if local_out is None else local_out
            x = self._teacher_part("context")(feats, pad)
            e = self.encoder.num_extra
            last, ffn, out = self._teacher_part("blocks")(x, _extend(pad, e))
            last = self._teacher_part("norm")(last)[:, e:]
        layers = [h[:, e:] for h in (ffn if self.cfg.target == "ffn" else out)]
        y = build_targets(layers, self.cfg.top_k, self.cfg.target_norm, self.cfg.final_norm, pad)
        return y, pad, _mean_over(last, pad)

    # --- student -------------------------------------------------------------------------------

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        mask: torch.Tensor,
        student_inputs: dict[str, torch.Tensor] | None = None,
        **_: object,
    ) -> dict[str, torch.Tensor]:
        cfg, enc = self.cfg, self.encoder
        feats, pad = enc.local(student_inputs if student_inputs is not None else inputs)
        reuse = student_inputs is None and "local" not in self.teacher
        y, teacher_pad, teacher_pooled = self._teacher(inputs, (feats.detach(), pad) if reuse else None)
        metrics = {"target_pos_share": position_share(y, teacher_pad), "teacher_rank": effective_rank(teacher_pooled)}
        if self.cfg.center_positions:
            y = center_positions(y, teacher_pad)

        n, b = mask.shape[0], y.shape[0]
        if feats.shape[0] != n:  # multi-mask: M clones of each sample
            feats, pad = feats.repeat_interleave(n // b, 0), pad.repeat_interleave(n // b, 0)
        if y.shape[0] != n:
            y = y.repeat_interleave(n // b, 0)
        mask = mask & ~pad
        e = enc.num_extra
        mask_emb = getattr(enc.local, "mask_embedding", None)
        if cfg.version == 1 and mask_emb is not None:
            feats = torch.where(mask.unsqueeze(-1), mask_emb.to(feats.dtype), feats)
        x = enc.context(feats, pad, mask if cfg.version == 2 else None)
        xpad = _extend(pad, e)
        if cfg.version == 2:
            x, xpad, keep = gather_kept(x, xpad, mask, e)
        x, _, _ = enc.blocks(x, xpad)
        x = enc.norm(x)
        extra, x = x[:, :e], x[:, e:]
        metrics["student_rank"] = effective_rank(_mean_over(x, xpad[:, e:]))
        if cfg.version == 1:
            pred = self.head(x[mask])
        else:
            full = scatter_kept(x, xpad[:, e:], keep, cfg.mask_noise_std)
            pred = self.head.proj(self.head.features(full, pad)[mask])  # project masked positions only
        target = y[mask]
        per_token = regression_loss(pred, target, cfg.loss_beta, cfg.loss_scale)
        loss = global_mean(per_token.sum(), per_token.numel())
        if cfg.cls_loss > 0 and e > 0:
            cls_target = _mean_over(y, pad)
            per_sample = regression_loss(extra[:, 0], cls_target, cfg.loss_beta, cfg.loss_scale)
            # the reference's weight: a sum over the device's samples next to a mean over masked tokens
            loss = loss + cfg.cls_loss * per_sample.sum()
        return {"loss": loss, "target_var": compute_var(target), "pred_var": compute_var(pred), **metrics}
