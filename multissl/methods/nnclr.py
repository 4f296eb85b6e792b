"""NNCLR (Dwibedi et al. 2021, "With a Little Help from My Friends: Nearest-Neighbor Contrastive Learning
of Visual Representations", arXiv 2104.14548): two augmented views of each sample go through the
encoder, a projector and a predictor; the nearest neighbour of one view's projection in a support set
(a queue of projections of earlier batches) replaces it as the positive of the other view's
prediction, contrasted with the predictions of the other samples of the batch (InfoNCE), both ways
(``L(z1, p2) + L(z2, p1)``: :func:`multissl.core.losses.nnclr.nnclr_loss`). The positive pair is then two
different samples the model already places close together: more semantic variation than augmentation
alone gives. No teacher.

The heads are the paper's (section 4.1): a projector of three Linear layers (2048 hidden, 256 out) and
a predictor of two (4096 hidden, 256 out), batch norm after every hidden layer and after the projector's
last. Each view goes through the heads on its own. The support set is a first-in-first-out queue of the
first view's l2-normalised projections; before it holds anything, the batch's own projections are the
support set (each view's neighbour is then a view of the batch).

Data parallelism: the queue is filled with the GLOBAL batch's projections (gathered), so it is the same
on every rank and on one rank with the same global batch; the negatives are the predictions of every
rank, gathered with gradient. The queue and its pointer are buffers saved in checkpoints, so resume is
exact.

>>> model = NNCLR(vision_adapter, EncoderConfig(), NNCLRConfig())  # doctest: +SKIP
>>> model(**view_collator(examples))["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from multissl.core.adapter import Modality, StudentView
from multissl.core.batchnorm import global_batch_norm
from multissl.core.blocks import EncoderConfig
from multissl.core.distributed import all_gather_rows, all_gather_with_grad
from multissl.core.heads import MLPConfig, mlp
from multissl.core.health import compute_var, effective_rank
from multissl.core.init import bert_init
from multissl.core.losses.nnclr import nnclr_loss, nnclr_queue_update
from multissl.methods.base import Method
from multissl.methods.siamese import (
    check_batch_views,
    check_view_counts,
    encode_views,
    finite,
    mean_cosine,
)


def nnclr_projector() -> MLPConfig:
    """The paper's projector: Linear 2048, BN, ReLU, Linear 2048, BN, ReLU, Linear 256, BN."""
    return MLPConfig(layers=3, hidden_dim=2048, out_dim=256, norm="batch", activation="relu", last_norm=True)


def nnclr_predictor() -> MLPConfig:
    """The paper's predictor: Linear 4096, BN, ReLU, Linear 256."""
    return MLPConfig(layers=2, hidden_dim=4096, out_dim=256, norm="batch", activation="relu")


@dataclass
class NNCLRConfig:
    """NNCLR: InfoNCE with the nearest neighbour of a view's projection in a support queue as the positive."""

    name: Literal["nnclr"] = "nnclr"
    """The objective."""

    pool: Literal["cls", "mean"] = "cls"
    """What the heads see of a view: the encoder's first extra token (cls; encoders without one, as
    speech's, fall back to the mean) or the mean over its tokens."""

    projector: MLPConfig = field(default_factory=nnclr_projector)
    """The projector on the pooled encoder output (the paper's: 2048 hidden, 256 out); dropped at export."""

    predictor: MLPConfig = field(default_factory=nnclr_predictor)
    """The predictor on the projection (the paper's: 4096 hidden, 256 out); its output width must equal the
    projector's."""

    temperature: float = 0.1
    """InfoNCE's temperature (the paper: 0.1)."""

    queue_length: int = 98304
    """Rows of the support set, a queue of projections of earlier batches (the paper: 98,304); it must hold
    at least one global batch."""

    def validate(self, where: str = "method") -> None:
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"{where}.pool must be cls or mean, got {self.pool!r}")
        self.projector.validate(f"{where}.projector")
        self.predictor.validate(f"{where}.predictor")
        if self.predictor.out_dim != self.projector.out_dim:
            raise ValueError(f"{where}.predictor.out_dim ({self.predictor.out_dim}) must equal "
                             f"{where}.projector.out_dim ({self.projector.out_dim}): predictions are compared with "
                             "neighbours of projections")
        if not self.temperature > 0:
            raise ValueError(f"{where}.temperature must be > 0, got {self.temperature}")
        if self.queue_length < 1:
            raise ValueError(f"{where}.queue_length must be >= 1, got {self.queue_length}")


class NNCLR(Method):
    """The encoder, the projector, the predictor and the support queue (buffers ``queue``,
    ``queue_pointer``, ``queue_rows``). ``forward(views)`` takes the view collator's batch of two views and
    returns the loss and the health metrics: ``pred_var`` and ``target_var`` (per-dimension spread over the
    batch of the l2-normalised predictions and projections), ``student_rank`` (RankMe of the pooled
    encoder outputs) and ``view_cos`` (mean cosine similarity of the two views' projections)."""

    name = "nnclr"
    config_class = NNCLRConfig

    @classmethod
    def student_view(cls, cfg: NNCLRConfig) -> StudentView:
        return StudentView(dense=False, views=True)

    @classmethod
    def check_views(cls, cfg: NNCLRConfig, views: Any) -> None:
        check_view_counts(cls.name, views)

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: NNCLRConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        self.projector = mlp(encoder.dim, cfg.projector)
        self.predictor = mlp(cfg.projector.out_dim, cfg.predictor)
        for head in (self.projector, self.predictor):
            head.apply(bert_init)
        self.projector = global_batch_norm(self.projector)
        self.predictor = global_batch_norm(self.predictor)
        self.register_buffer("queue", torch.zeros(cfg.queue_length, cfg.projector.out_dim))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_rows", torch.zeros((), dtype=torch.long))

    def support(self, fallback: torch.Tensor) -> torch.Tensor:
        """The support set: the queue's filled rows, or ``fallback`` while it is empty."""
        rows = int(self.queue_rows)
        return self.queue[:rows] if rows > 0 else fallback

    def forward(self, views: list[dict[str, torch.Tensor]], global_views: int = 2,
                **_: object) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        check_batch_views(self.name, views, global_views)
        h = encode_views(self.encoder, views, cfg.pool)
        z = [self.projector(x) for x in h]  # each view through the heads on its own
        p = [self.predictor(x) for x in z]
        # the global batch on every rank: projections (they only pick neighbours: no gradient) and predictions
        # (the other samples' are the negatives: with gradient back to the rank that made them)
        z_all = [all_gather_rows(F.normalize(x.detach().float(), dim=-1)) for x in z]
        p_all = [all_gather_with_grad(x) for x in p]
        support = self.support(z_all[0])
        # every rank computes the global batch's loss; the gathers' backward sums its gradient over the
        # ranks, and DDP's average over the ranks then gives the gradient of the global loss
        loss = (nnclr_loss(z_all[0], p_all[1], support, cfg.temperature)
                + nnclr_loss(z_all[1], p_all[0], support, cfg.temperature))
        if self.training:
            self._enqueue(z_all[0])
        return {"loss": loss, "pred_var": compute_var(F.normalize(torch.cat(p).float(), dim=-1)),
                "target_var": compute_var(F.normalize(torch.cat(z).float(), dim=-1)),
                "student_rank": effective_rank(h[0]), "view_cos": mean_cosine(z[0], z[1])}

    @torch.no_grad()
    def _enqueue(self, rows: torch.Tensor) -> None:
        """Push the global batch's normalised first-view projections into the support queue."""
        if rows.shape[0] > self.cfg.queue_length:
            raise ValueError(f"method.queue_length ({self.cfg.queue_length}) must hold at least one global batch "
                             f"({rows.shape[0]} rows)")
        if not finite(rows):
            return
        queue, pointer = nnclr_queue_update(self.queue, int(self.queue_pointer), rows)
        self.queue.copy_(queue)
        self.queue_pointer.fill_(pointer)
        self.queue_rows.fill_(min(self.cfg.queue_length, int(self.queue_rows) + rows.shape[0]))

    @classmethod
    def card_title(cls, cfg: NNCLRConfig) -> str:
        return "NNCLR (nearest-neighbour contrastive learning)"

    @classmethod
    def card_tags(cls, cfg: NNCLRConfig) -> list[str]:
        return ["nnclr"]

    @classmethod
    def card_objective(cls, cfg: NNCLRConfig, mask: Any) -> str:
        return (f"NNCLR: InfoNCE (temperature {cfg.temperature}) between each view's prediction and the nearest "
                f"neighbour of the other view's projection in a support queue of {cfg.queue_length}, both ways; "
                f"heads not exported; {cfg.pool}-pooled encoder output")
