"""VICReg (Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", arXiv 2105.04906): two augmented views of each sample go through the
encoder and an expander MLP; the loss (:func:`multissl.core.losses.vicreg.vicreg_loss`) pulls the two
views' embeddings together (invariance, mean squared error), keeps the standard deviation of every
embedding feature over the batch above 1 (variance, a hinge) and decorrelates the features
(covariance). No teacher, no negatives: the variance and covariance terms keep the embeddings from
collapsing.

The expander is the paper's: three Linear layers of 8192 (batch norm and ReLU after the first two).
Each view goes through it on its own, as in the paper's code. Under data parallelism the variance
and covariance run over every rank's embeddings (gathered with gradient, as the paper's code does)
and the expander's batch norms take the global batch's statistics; it is dropped at export.

>>> model = VICReg(vision_adapter, EncoderConfig(), VICRegConfig())  # doctest: +SKIP
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
from multissl.core.losses.vicreg import vicreg_loss
from multissl.methods.base import Method
from multissl.methods.siamese import (
    check_batch_views,
    check_view_counts,
    encode_views,
    mean_cosine,
)


def vicreg_expander() -> MLPConfig:
    """The paper's expander: Linear 8192, batch norm, ReLU, Linear 8192, batch norm, ReLU, Linear 8192."""
    return MLPConfig(layers=3, hidden_dim=8192, out_dim=8192, norm="batch", activation="relu")


@dataclass
class VICRegConfig:
    """VICReg: invariance between two views' embeddings, variance and covariance regularisation of each."""

    name: Literal["vicreg"] = "vicreg"
    """The objective."""

    pool: Literal["cls", "mean"] = "cls"
    """What the expander sees of a view: the encoder's first extra token (cls; encoders without one,
    as speech's, fall back to the mean) or the mean over its tokens."""

    projector: MLPConfig = field(default_factory=vicreg_expander)
    """The expander on the pooled encoder output (the paper's: 3 layers of 8192); dropped at export."""

    invariance_weight: float = 25.0
    """lambda, the weight of the invariance (mean squared error) term (the paper: 25)."""

    variance_weight: float = 25.0
    """mu, the weight of the variance term (the paper: 25)."""

    covariance_weight: float = 1.0
    """nu, the weight of the covariance term (the paper: 1)."""

    gamma: float = 1.0
    """The standard deviation each embedding feature is kept above (the paper: 1)."""

    def validate(self, where: str = "method") -> None:
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"{where}.pool must be cls or mean, got {self.pool!r}")
        self.projector.validate(f"{where}.projector")
        for key in ("invariance_weight", "variance_weight", "covariance_weight", "gamma"):
            if getattr(self, key) < 0:
                raise ValueError(f"{where}.{key} must be >= 0, got {getattr(self, key)}")


class VICReg(Method):
    """The encoder and its expander. ``forward(views)`` takes the view collator's batch of two views and
    returns the loss and the health metrics: ``pred_var`` (per-dimension spread over the batch of the
    l2-normalised embeddings), ``embedding_std`` (the mean per-feature standard deviation of the raw
    embeddings, which the variance term keeps above ``gamma``), ``student_rank`` (RankMe of the pooled
    encoder outputs) and ``view_cos`` (mean cosine similarity of the two views' embeddings)."""

    name = "vicreg"
    config_class = VICRegConfig

    @classmethod
    def student_view(cls, cfg: VICRegConfig) -> StudentView:
        return StudentView(dense=False, views=True)

    @classmethod
    def check_views(cls, cfg: VICRegConfig, views: Any) -> None:
        check_view_counts(cls.name, views)

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: VICRegConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        self.projector = mlp(encoder.dim, cfg.projector)
        self.projector.apply(bert_init)
        self.projector = global_batch_norm(self.projector)

    def forward(self, views: list[dict[str, torch.Tensor]], global_views: int = 2,
                **_: object) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        check_batch_views(self.name, views, global_views)
        h = encode_views(self.encoder, views, cfg.pool)
        z = [self.projector(x) for x in h]  # each view through the batch norms on its own, as the paper's code
        loss = vicreg_loss(z[0], z[1], cfg.invariance_weight, cfg.variance_weight, cfg.covariance_weight,
                           cfg.gamma, gather=True)
        both = torch.cat(z).float()
        return {"loss": loss, "pred_var": compute_var(F.normalize(both, dim=-1)),
                "embedding_std": compute_var(both), "student_rank": effective_rank(h[0]),
                "view_cos": mean_cosine(z[0], z[1])}

    @classmethod
    def card_title(cls, cfg: VICRegConfig) -> str:
        return "VICReg (variance-invariance-covariance regularisation)"

    @classmethod
    def card_tags(cls, cfg: VICRegConfig) -> list[str]:
        return ["vicreg"]

    @classmethod
    def card_objective(cls, cfg: VICRegConfig, mask: Any) -> str:
        return (f"VICReg between two augmented views (invariance x {cfg.invariance_weight}, variance x "
                f"{cfg.variance_weight}, covariance x {cfg.covariance_weight}), a {cfg.projector.layers}-layer "
                f"expander to {cfg.projector.out_dim} (not exported); {cfg.pool}-pooled encoder output")
