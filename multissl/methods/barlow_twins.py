"""Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", arXiv 2103.03230): two augmented views of each sample go through the encoder and a
projector MLP; the cross-correlation matrix of the two views' projections, each standardised per
feature over the batch, is pulled to the identity: its diagonal to 1 (the views agree), its
off-diagonal to 0 with weight lambda (the features carry different information)
(:func:`multissl.core.losses.barlow_twins.barlow_twins_loss`). No teacher, no negatives, no
stop-gradient: the redundancy term is what keeps the features from collapsing.

The projector is the paper's: three Linear layers of 8192 (batch norm and ReLU after the first two);
the last batch norm without affine parameters is the loss's own standardisation. Each view goes
through the projector on its own, as in the paper's code. Under data parallelism the loss's means,
variances and correlation run over the global batch, and the projector's batch norms take
the global batch's statistics; the projector is dropped at export.

>>> model = BarlowTwins(vision_adapter, EncoderConfig(), BarlowTwinsConfig())  # doctest: +SKIP
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
from multissl.core.heads import MLPConfig, mlp
from multissl.core.health import compute_var, effective_rank
from multissl.core.init import bert_init
from multissl.core.losses.barlow_twins import barlow_twins_loss
from multissl.methods.base import Method
from multissl.methods.siamese import (
    check_batch_views,
    check_view_counts,
    encode_views,
    mean_cosine,
)


def barlow_twins_projector() -> MLPConfig:
    """The paper's projector: Linear 8192, batch norm, ReLU, Linear 8192, batch norm, ReLU, Linear 8192."""
    return MLPConfig(layers=3, hidden_dim=8192, out_dim=8192, norm="batch", activation="relu")


@dataclass
class BarlowTwinsConfig:
    """Barlow Twins: the cross-correlation of two views' standardised projections pulled to the identity."""

    name: Literal["barlow_twins"] = "barlow_twins"
    """The objective."""

    pool: Literal["cls", "mean"] = "cls"
    """What the projector sees of a view: the encoder's first extra token (cls; encoders without one,
    as speech's, fall back to the mean) or the mean over its tokens."""

    projector: MLPConfig = field(default_factory=barlow_twins_projector)
    """The projector on the pooled encoder output (the paper's: 3 layers of 8192); dropped at export."""

    off_diagonal_weight: float = 5e-3
    """lambda, the weight of the off-diagonal (redundancy reduction) term (the paper: 5e-3)."""

    def validate(self, where: str = "method") -> None:
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"{where}.pool must be cls or mean, got {self.pool!r}")
        self.projector.validate(f"{where}.projector")
        if self.off_diagonal_weight < 0:
            raise ValueError(f"{where}.off_diagonal_weight must be >= 0, got {self.off_diagonal_weight}")


class BarlowTwins(Method):
    """The encoder and its projector. ``forward(views)`` takes the view collator's batch of two views and
    returns the loss and the health metrics: ``pred_var`` (per-dimension spread over the batch of the
    l2-normalised projections), ``student_rank`` (RankMe of the pooled encoder outputs) and ``view_cos``
    (mean cosine similarity of the two views' projections)."""

    name = "barlow_twins"
    config_class = BarlowTwinsConfig

    @classmethod
    def student_view(cls, cfg: BarlowTwinsConfig) -> StudentView:
        return StudentView(dense=False, views=True)

    @classmethod
    def check_views(cls, cfg: BarlowTwinsConfig, views: Any) -> None:
        check_view_counts(cls.name, views)

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: BarlowTwinsConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        self.projector = mlp(encoder.dim, cfg.projector)
        self.projector.apply(bert_init)
        self.projector = global_batch_norm(self.projector)

    def forward(self, views: list[dict[str, torch.Tensor]], global_views: int = 2,
                **_: object) -> dict[str, torch.Tensor]:
        check_batch_views(self.name, views, global_views)
        h = encode_views(self.encoder, views, self.cfg.pool)
        z = [self.projector(x) for x in h]  # each view through the batch norms on its own, as the paper's code
        loss = barlow_twins_loss(z[0], z[1], self.cfg.off_diagonal_weight)
        return {"loss": loss, "pred_var": compute_var(F.normalize(torch.cat(z).float(), dim=-1)),
                "student_rank": effective_rank(h[0]), "view_cos": mean_cosine(z[0], z[1])}

    @classmethod
    def card_title(cls, cfg: BarlowTwinsConfig) -> str:
        return "Barlow Twins (redundancy reduction between augmented views)"

    @classmethod
    def card_tags(cls, cfg: BarlowTwinsConfig) -> list[str]:
        return ["barlow-twins"]

    @classmethod
    def card_objective(cls, cfg: BarlowTwinsConfig, mask: Any) -> str:
        return (f"Barlow Twins: the cross-correlation of two augmented views' standardised projections pulled to "
                f"the identity (off-diagonal weight {cfg.off_diagonal_weight}), a {cfg.projector.layers}-layer "
                f"projector to {cfg.projector.out_dim} (not exported); {cfg.pool}-pooled encoder output")
