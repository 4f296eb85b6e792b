"""data2vec (Baevski et al. 2022, arXiv 2202.03555) and data2vec 2.0 (Baevski et al. 2022, arXiv
2212.07525), for any modality adapter: the student sees a masked sample and regresses, at the masked
positions, the average of its EMA teacher's top layers on the unmasked sample.

v1 (:class:`Data2VecDense`): the student encodes the whole masked input; a regression head predicts
the targets. v2 (:class:`Data2VecSparse`): the student encodes only the unmasked tokens of M masked
clones of each sample; a light conv decoder fills the masked positions (noise in, predictions out);
the teacher runs once per sample.

>>> from multissl.modalities import get_modality  # doctest: +SKIP
>>> model = Data2Vec(adapter, EncoderConfig(), Data2VecConfig(version=2))  # a Data2VecSparse  # doctest: +SKIP
>>> model(**batch)["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from multissl.core.adapter import PARTS, Modality, StudentView
from multissl.core.blocks import EncoderConfig
from multissl.core.decoder import DecoderConfig, projection
from multissl.core.distributed import global_mean
from multissl.core.ema import EMAConfig
from multissl.core.encoder import eval_mode, extend_padding, gather_kept, mean_over, scatter_kept
from multissl.core.health import compute_var, effective_rank, position_share
from multissl.core.init import bert_init
from multissl.core.losses import regression_loss
from multissl.core.targets import TargetNorm, build_targets, center_positions
from multissl.methods.base import Method


@dataclass
class Data2VecConfig:
    """data2vec: the student regresses its EMA teacher's averaged top-layer representations."""

    name: Literal["data2vec"] = "data2vec"
    """The objective."""

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


class Data2Vec(Method):
    """Student encoder, EMA teacher, and what predicts the targets; the version picks the class.

    ``forward(inputs, mask, student_inputs=None)`` takes the collator's batch: ``inputs`` the unmasked
    input of B samples (what the teacher sees), ``mask`` (B*M, T) True where the student is masked,
    ``student_inputs`` an optional different student input (text's <mask> tokens). It returns the
    loss and the health metrics. ``run_steps`` is the run's length in optimiser steps (for EMA
    schedules written against it).
    """

    name = "data2vec"
    config_class = Data2VecConfig

    def __new__(cls, modality: Modality, encoder: EncoderConfig, cfg: Data2VecConfig, run_steps: int = 0):
        if cls is Data2Vec:  # the version picks the student
            cls = Data2VecDense if cfg.version == 1 else Data2VecSparse
        return super().__new__(cls)

    @classmethod
    def student_view(cls, cfg: Data2VecConfig) -> StudentView:
        return StudentView(dense=cfg.version == 1, clones=cfg.clones)

    @classmethod
    def check(cls, cfg: Data2VecConfig, encoder: EncoderConfig, mask: Any) -> None:
        if cfg.top_k > encoder.depth:
            raise ValueError(f"method.top_k ({cfg.top_k}) > encoder.depth ({encoder.depth})")
        if cfg.version == 2 and mask.kind == "bert":
            raise ValueError("mask.kind 'bert' needs method.version 1 (v2 drops masked tokens)")

    @classmethod
    def card_tags(cls, cfg: Data2VecConfig) -> list[str]:
        return ["data2vec", f"data2vec-v{cfg.version}"]

    @classmethod
    def card_title(cls, cfg: Data2VecConfig) -> str:
        return f"data2vec {'2.0' if cfg.version == 2 else '(v1)'}"

    @classmethod
    def card_objective(cls, cfg: Data2VecConfig, mask: Any) -> str:
        return (f"data2vec v{cfg.version}, top-{cfg.top_k} teacher layers, {mask.kind} masking at {mask.prob}, "
                f"{cfg.clones} clone(s) per sample")

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: Data2VecConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        self.head = self.build_head(modality, encoder)
        view = self.student_view(cfg)
        shared, copied = modality.teacher_sharing(view.dense)
        self.init_teacher([p for p in PARTS if p not in shared], copied, cfg.ema, run_steps)

    def build_head(self, modality: Modality, encoder: EncoderConfig) -> torch.nn.Module:
        raise NotImplementedError

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
        teacher, enc = self.teacher, self.encoder
        with eval_mode(*teacher.shared(enc)):
            feats, pad = teacher.part("local", enc)(inputs) if local_out is None else local_out
            x = teacher.part("context", enc)(feats, pad)
            e = enc.num_extra
            last, ffn, out = teacher.part("blocks", enc)(x, extend_padding(pad, e))
            last = teacher.part("norm", enc)(last)[:, e:]
        layers = [h[:, e:] for h in (ffn if self.cfg.target == "ffn" else out)]
        y = build_targets(layers, self.cfg.top_k, self.cfg.target_norm, self.cfg.final_norm, pad)
        return y, pad, mean_over(last, pad)

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
        if cfg.center_positions:
            y = center_positions(y, teacher_pad)

        n, b = mask.shape[0], y.shape[0]
        if feats.shape[0] != n:  # multi-mask: M clones of each sample
            feats, pad = feats.repeat_interleave(n // b, 0), pad.repeat_interleave(n // b, 0)
        if y.shape[0] != n:
            y = y.repeat_interleave(n // b, 0)
        mask = mask & ~pad
        extra, x, xpad, pred = self.predict(feats, pad, mask)
        metrics["student_rank"] = effective_rank(mean_over(x, xpad))
        target = y[mask]
        per_token = regression_loss(pred, target, cfg.loss_beta, cfg.loss_scale)
        loss = global_mean(per_token.sum(), per_token.numel())
        if cfg.cls_loss > 0 and extra.shape[1] > 0:
            cls_target = mean_over(y, pad)
            per_sample = regression_loss(extra[:, 0], cls_target, cfg.loss_beta, cfg.loss_scale)
            # the reference's weight: a sum over the device's samples next to a mean over masked tokens
            loss = loss + cfg.cls_loss * per_sample.sum()
        return {"loss": loss, "target_var": compute_var(target), "pred_var": compute_var(pred), **metrics}

    def predict(
        self, feats: torch.Tensor, pad: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The student on local features (N, T, D) with their padding and mask (N, T): (its extra
        tokens (N, E, D), its output tokens and their padding, the predictions at masked positions)."""
        raise NotImplementedError


class Data2VecDense(Data2Vec):
    """data2vec v1: masked tokens stay in (the modality's mask embedding replaces them, or the
    collator's mask token); a regression head predicts the targets from the student's output."""

    def build_head(self, modality: Modality, encoder: EncoderConfig) -> torch.nn.Module:
        head = projection(encoder.dim, encoder.dim, self.cfg.head_layers)
        head.apply(bert_init)  # the reference initialises the whole model, head included
        return head

    def predict(self, feats, pad, mask):
        enc, e = self.encoder, self.encoder.num_extra
        mask_emb = getattr(enc.local, "mask_embedding", None)
        if mask_emb is not None:
            feats = torch.where(mask.unsqueeze(-1), mask_emb.to(feats.dtype), feats)
        x = enc.context(feats, pad, None)
        xpad = extend_padding(pad, e)
        x, _, _ = enc.blocks(x, xpad)
        x = enc.norm(x)
        return x[:, :e], x[:, e:], xpad[:, e:], self.head(x[:, e:][mask])


class Data2VecSparse(Data2Vec):
    """data2vec 2.0: the student encodes only its unmasked tokens; the modality's conv decoder, fed
    noise at the masked positions, predicts the targets there."""

    def build_head(self, modality: Modality, encoder: EncoderConfig) -> torch.nn.Module:
        return modality.build_decoder(self.cfg.decoder, encoder.dim)

    def predict(self, feats, pad, mask):
        enc, e = self.encoder, self.encoder.num_extra
        x = enc.context(feats, pad, mask)
        x, xpad, keep = gather_kept(x, extend_padding(pad, e), mask, e)
        x, _, _ = enc.blocks(x, xpad)
        x = enc.norm(x)
        extra, x = x[:, :e], x[:, e:]
        full = scatter_kept(x, xpad[:, e:], keep, self.cfg.mask_noise_std)
        pred = self.head.proj(self.head.features(full, pad)[mask])  # project masked positions only
        return extra, x, xpad[:, e:], pred
