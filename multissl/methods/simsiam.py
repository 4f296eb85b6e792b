"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning", arXiv 2011.10566): two
augmented views of each sample go through the same encoder and projector; a predictor MLP maps one
view's projection to the other's, and the loss is the negative cosine similarity with a
stop-gradient on the projection it is compared with, both ways
(``D(p1, z2) / 2 + D(p2, z1) / 2``, :func:`multissl.core.losses.simsiam.simsiam_loss`). No momentum
encoder, no negatives: the stop-gradient is what keeps the outputs from collapsing (section 4.1).

The heads are the paper's (section 3): a projector of three Linear layers of 2048 with batch norm
after each (the last one without affine parameters) and ReLU after the first two, and a bottleneck
predictor (Linear 512, batch norm, ReLU, Linear 2048). Each view goes through the heads on its own,
as in the paper's code. Under data parallelism the loss is the global batch's mean, and the
heads' batch norms take the global batch's statistics; the heads are dropped at export.

>>> model = SimSiam(vision_adapter, EncoderConfig(), SimSiamConfig())  # doctest: +SKIP
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
from multissl.core.distributed import global_mean
from multissl.core.heads import MLPConfig, mlp
from multissl.core.health import compute_var, effective_rank
from multissl.core.init import bert_init
from multissl.core.losses.simsiam import simsiam_loss
from multissl.methods.base import Method
from multissl.methods.siamese import (
    check_batch_views,
    check_view_counts,
    encode_views,
    mean_cosine,
)


def simsiam_projector() -> MLPConfig:
    """The paper's projector: 3 Linear layers of 2048, batch norm after each (the last without affine)."""
    return MLPConfig(layers=3, hidden_dim=2048, out_dim=2048, norm="batch", activation="relu", last_norm=True)


def simsiam_predictor() -> MLPConfig:
    """The paper's predictor: Linear 512, batch norm, ReLU, Linear 2048 (a bottleneck)."""
    return MLPConfig(layers=2, hidden_dim=512, out_dim=2048, norm="batch", activation="relu")


@dataclass
class SimSiamConfig:
    """SimSiam: one view's prediction regresses the other view's projection, under a stop-gradient."""

    name: Literal["simsiam"] = "simsiam"
    """The objective."""

    pool: Literal["cls", "mean"] = "cls"
    """What the projector sees of a view: the encoder's first extra token (cls; encoders without one,
    as speech's, fall back to the mean) or the mean over its tokens."""

    projector: MLPConfig = field(default_factory=simsiam_projector)
    """The projector on the pooled encoder output (the paper's: 3 layers of 2048, batch norm after each)."""

    predictor: MLPConfig = field(default_factory=simsiam_predictor)
    """The predictor on the projection (the paper's: 2048 -> 512 -> 2048); its output width must equal the
    projector's."""

    def validate(self, where: str = "method") -> None:
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"{where}.pool must be cls or mean, got {self.pool!r}")
        self.projector.validate(f"{where}.projector")
        self.predictor.validate(f"{where}.predictor")
        if self.predictor.out_dim != self.projector.out_dim:
            raise ValueError(f"{where}.predictor.out_dim ({self.predictor.out_dim}) must equal "
                             f"{where}.projector.out_dim ({self.projector.out_dim}): the prediction is compared "
                             "with the other view's projection")


class SimSiam(Method):
    """The encoder, the projector and the predictor. ``forward(views)`` takes the view collator's batch of
    two views and returns the loss and the health metrics: ``target_var`` and ``pred_var`` (per-dimension
    spread over the batch of the l2-normalised projections and predictions: about ``1/sqrt(out_dim)``
    when spread, 0 when collapsed, the paper's figure 2), ``student_rank`` (RankMe of the pooled encoder
    outputs) and ``view_cos`` (mean cosine similarity of the two views' projections)."""

    name = "simsiam"
    config_class = SimSiamConfig

    @classmethod
    def student_view(cls, cfg: SimSiamConfig) -> StudentView:
        return StudentView(dense=False, views=True)

    @classmethod
    def check_views(cls, cfg: SimSiamConfig, views: Any) -> None:
        check_view_counts(cls.name, views)

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: SimSiamConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        self.projector = mlp(encoder.dim, cfg.projector)
        self.predictor = mlp(cfg.projector.out_dim, cfg.predictor)
        for head in (self.projector, self.predictor):
            head.apply(bert_init)
        self.projector = global_batch_norm(self.projector)
        self.predictor = global_batch_norm(self.predictor)

    def forward(self, views: list[dict[str, torch.Tensor]], global_views: int = 2,
                **_: object) -> dict[str, torch.Tensor]:
        b = check_batch_views(self.name, views, global_views)
        h = encode_views(self.encoder, views, self.cfg.pool)
        z = [self.projector(x) for x in h]  # each view through the batch norms on its own, as the paper's code
        p = [self.predictor(x) for x in z]
        # the loss detaches the projection it compares with: the stop-gradient
        per_view = simsiam_loss(p[0], z[1]) / 2 + simsiam_loss(p[1], z[0]) / 2
        return {"loss": global_mean(per_view * b, b),
                "target_var": compute_var(F.normalize(torch.cat(z).float(), dim=-1)),
                "pred_var": compute_var(F.normalize(torch.cat(p).float(), dim=-1)),
                "student_rank": effective_rank(h[0]), "view_cos": mean_cosine(z[0], z[1])}

    @classmethod
    def card_title(cls, cfg: SimSiamConfig) -> str:
        return "SimSiam (siamese prediction with a stop-gradient)"

    @classmethod
    def card_tags(cls, cfg: SimSiamConfig) -> list[str]:
        return ["simsiam"]

    @classmethod
    def card_objective(cls, cfg: SimSiamConfig, mask: Any) -> str:
        return (f"SimSiam: two augmented views; each view's prediction regresses the other's projection under a "
                f"stop-gradient (negative cosine, both ways), projector {cfg.projector.hidden_dim} -> "
                f"{cfg.projector.out_dim}, predictor bottleneck {cfg.predictor.hidden_dim} (heads not exported); "
                f"{cfg.pool}-pooled encoder output")
