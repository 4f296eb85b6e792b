"""MoCo v3 (Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers",
arXiv 2104.02057): two augmented views of each sample; the online network (encoder, projector,
predictor) turns each view into a query, the momentum encoder (an EMA of the encoder and the
projector, no predictor) turns the other view into keys, and InfoNCE asks each query to pick out its
own sample's key among the keys of the whole global batch, both ways
(``ctr(q1, k2) + ctr(q2, k1)``, each ``2 tau CE``: :func:`multissl.core.losses.mocov3.mocov3_loss`).
The keys of every rank are the negatives; they carry no gradient, so they are gathered without one.
No queue: the batch is the dictionary (section 2). The momentum rises from 0.99 to 1 along a half
cosine over the run (the paper's ViT recipe).

The heads are the paper's for ViTs (section 4 and its code): a projector of three Linear layers
(4096 hidden, 256 out) and a predictor of two (4096 hidden), each with batch norm and ReLU after the
hidden layers and a batch norm without affine parameters after the last. Each view goes through the
heads on its own. The momentum projector's batch norms normalise with the batch's statistics, as the
online ones do; the EMA copies the online running statistics to them. Optionally the local encoder
(a ViT's patch projection) stays at its random initialisation: the paper's "random patch projection"
(section 4.2), which steadies ViT training.

>>> model = MoCoV3(vision_adapter, EncoderConfig(), MoCoV3Config(), run_steps=1000)  # doctest: +SKIP
>>> model(**view_collator(examples))["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from multissl.core.adapter import PARTS, Modality, StudentView
from multissl.core.batchnorm import global_batch_norm
from multissl.core.blocks import EncoderConfig
from multissl.core.distributed import global_mean
from multissl.core.ema import EMAConfig
from multissl.core.heads import MLPConfig, mlp, pool
from multissl.core.health import compute_var, effective_rank
from multissl.core.init import bert_init
from multissl.core.losses.mocov3 import mocov3_loss
from multissl.methods.base import Method
from multissl.methods.siamese import (
    batch_statistics,
    check_batch_views,
    check_view_counts,
    encode_views,
    mean_cosine,
)


def mocov3_projector() -> MLPConfig:
    """The paper's projector for ViTs: Linear 4096, BN, ReLU, Linear 4096, BN, ReLU, Linear 256, BN."""
    return MLPConfig(layers=3, hidden_dim=4096, out_dim=256, norm="batch", activation="relu", last_norm=True)


def mocov3_predictor() -> MLPConfig:
    """The paper's predictor for ViTs: Linear 4096, BN, ReLU, Linear 256, BN."""
    return MLPConfig(layers=2, hidden_dim=4096, out_dim=256, norm="batch", activation="relu", last_norm=True)


@dataclass
class MoCoV3EMAConfig(EMAConfig):
    """The momentum encoder's decay: ``m = 1 - (1 - m0) (cos(pi k / K) + 1) / 2`` over the run's K updates,
    from m0 = 0.99 to 1 (the paper's ViT recipe)."""

    decay: float = 0.99
    """Momentum at the first update (the paper: 0.99)."""

    end_decay: float = 1.0
    """Momentum at the end of the anneal (the paper: 1)."""

    anneal_fraction: float = 1.0
    """Anneal over this fraction of the run's ``train.max_steps`` (the paper: the whole run)."""

    shape: Literal["linear", "cosine"] = "cosine"
    """The momentum's path over the anneal (the paper: cosine)."""


@dataclass
class MoCoV3Config:
    """MoCo v3: symmetric InfoNCE between the online queries and the momentum encoder's keys of the
    global batch."""

    name: Literal["mocov3"] = "mocov3"
    """The objective."""

    pool: Literal["cls", "mean"] = "cls"
    """What the heads see of a view: the encoder's first extra token (cls; encoders without one, as
    speech's, fall back to the mean) or the mean over its tokens."""

    projector: MLPConfig = field(default_factory=mocov3_projector)
    """The projector on the pooled encoder output (part of the momentum encoder too)."""

    predictor: MLPConfig = field(default_factory=mocov3_predictor)
    """The predictor on the projection (the online network's only); its output width must equal the
    projector's."""

    temperature: float = 0.2
    """InfoNCE's temperature tau (the paper: 0.2 for ViTs, 1.0 for ResNets)."""

    freeze_local: bool = False
    """Keep the modality's local encoder (a ViT's patch projection) at its random initialisation: the
    paper's random patch projection (section 4.2), on in its ViT recipe."""

    ema: MoCoV3EMAConfig = field(default_factory=MoCoV3EMAConfig)
    """The momentum encoder's decay schedule."""

    def validate(self, where: str = "method") -> None:
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"{where}.pool must be cls or mean, got {self.pool!r}")
        self.projector.validate(f"{where}.projector")
        self.predictor.validate(f"{where}.predictor")
        if self.predictor.out_dim != self.projector.out_dim:
            raise ValueError(f"{where}.predictor.out_dim ({self.predictor.out_dim}) must equal "
                             f"{where}.projector.out_dim ({self.projector.out_dim}): queries are compared with keys")
        if not self.temperature > 0:
            raise ValueError(f"{where}.temperature must be > 0, got {self.temperature}")
        self.ema.validate(f"{where}.ema")


class MoCoV3(Method):
    """The online network (encoder, projector, predictor) and the momentum encoder (encoder and
    projector). ``forward(views)`` takes the view collator's batch of two views and returns the loss and
    the health metrics: ``target_var`` and ``pred_var`` (per-dimension spread over the batch of the
    l2-normalised keys and queries), ``student_rank`` and ``teacher_rank`` (RankMe of the pooled encoder
    outputs) and ``view_cos`` (mean cosine similarity of the two views' queries)."""

    name = "mocov3"
    config_class = MoCoV3Config

    @classmethod
    def student_view(cls, cfg: MoCoV3Config) -> StudentView:
        return StudentView(dense=False, views=True)

    @classmethod
    def check_views(cls, cfg: MoCoV3Config, views: Any) -> None:
        check_view_counts(cls.name, views)

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: MoCoV3Config, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        self.projector = mlp(encoder.dim, cfg.projector)
        self.predictor = mlp(cfg.projector.out_dim, cfg.predictor)
        for head in (self.projector, self.predictor):
            head.apply(bert_init)
        self.projector = global_batch_norm(self.projector)
        self.predictor = global_batch_norm(self.predictor)
        if cfg.freeze_local:
            self.encoder.local.requires_grad_(False)
        # the momentum encoder: an EMA of the whole encoder and of the projector (made after the batch norms
        # take the global batch's statistics, so its copies do too)
        self.init_teacher(PARTS, (), cfg.ema, run_steps, heads=["projector"])

    def forward(self, views: list[dict[str, torch.Tensor]], global_views: int = 2,
                **_: object) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        b = check_batch_views(self.name, views, global_views)
        h = encode_views(self.encoder, views, cfg.pool)
        q = [self.predictor(self.projector(x)) for x in h]  # each view through the heads on its own
        with torch.no_grad():
            tx, tpad = self.teacher_encode({k: torch.cat([views[0][k], views[1][k]]) for k in views[0]})
            th = pool(tx, tpad, self.encoder.num_extra, cfg.pool)
            projector = self.teacher["projector"]
            with batch_statistics(projector):
                k = [projector(x) for x in th.chunk(2)]
        per_view = mocov3_loss(q[0], k[1], cfg.temperature) + mocov3_loss(q[1], k[0], cfg.temperature)
        return {"loss": global_mean(per_view * b, b),
                "target_var": compute_var(F.normalize(torch.cat(k).float(), dim=-1)),
                "pred_var": compute_var(F.normalize(torch.cat(q).float(), dim=-1)),
                "student_rank": effective_rank(h[0]), "teacher_rank": effective_rank(th[:b]),
                "view_cos": mean_cosine(q[0], q[1])}

    @classmethod
    def card_title(cls, cfg: MoCoV3Config) -> str:
        return "MoCo v3 (momentum contrast)"

    @classmethod
    def card_tags(cls, cfg: MoCoV3Config) -> list[str]:
        return ["moco-v3"]

    @classmethod
    def card_objective(cls, cfg: MoCoV3Config, mask: Any) -> str:
        return (f"MoCo v3: symmetric InfoNCE (temperature {cfg.temperature}) between the online queries and the "
                f"momentum encoder's keys of the global batch, momentum {cfg.ema.decay} -> {cfg.ema.end_decay}, "
                f"projector {cfg.projector.hidden_dim} -> {cfg.projector.out_dim} and predictor (not exported); "
                f"{cfg.pool}-pooled encoder output")
