"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations",
arXiv 2002.05709): two augmented views of each sample go through the encoder, a pooled vector each,
and a projector MLP (Linear, batch norm, ReLU, Linear; section 2.1 and appendix B.9); NT-Xent then
asks each projection to pick out its partner view among the 2N - 1 other projections of the global
batch. No teacher. The projector is dropped at export: the encoder's pooled output is the feature.

Views are the modality's (``views:`` in the recipe): kornia crops and colour for images, crops, gain
and mixing for speech, dropout copies of a sentence for text. With more than two views (multi-crop),
every other view of the same sample is a positive: the multi-view NT-Xent, which is SupCon's loss with
one label per sample (Khosla et al. 2020, eq. 2).

Data parallelism: the negatives come from every rank with gradients (``ntxent_loss(gather=True)``),
and the projector's batch norm normalises with the statistics of the global batch
(:class:`multissl.core.batchnorm.GlobalBatchNorm1d`, SimCLR's "global BN"; unlike ``SyncBatchNorm``
it also runs on CPU ranks), so N ranks train what one rank with the global batch trains.

>>> model = SimCLR(vision_adapter, EncoderConfig(), SimCLRConfig())  # doctest: +SKIP
>>> model(**view_collator(examples))["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from multissl.core.adapter import Modality, StudentView
from multissl.core.batchnorm import global_batch_norm
from multissl.core.blocks import EncoderConfig
from multissl.core.distributed import rows_before
from multissl.core.heads import MLPConfig, mlp, pool
from multissl.core.health import compute_var, effective_rank
from multissl.core.init import bert_init
from multissl.core.losses.ntxent import ntxent_loss
from multissl.core.losses.supcon import supcon_loss
from multissl.methods.base import Method


def simclr_projector() -> MLPConfig:
    """SimCLR's projector: Linear, batch norm, ReLU, Linear to 128."""
    return MLPConfig(layers=2, hidden_dim=2048, out_dim=128, norm="batch", activation="relu")


@dataclass
class SimCLRConfig:
    """SimCLR: a projector on the pooled encoder output, NT-Xent between the views of each sample."""

    name: Literal["simclr"] = "simclr"
    """The objective."""

    projector: MLPConfig = field(default_factory=simclr_projector)
    """The projector MLP (the paper's: 2 layers, batch norm, output 128); dropped at export."""

    temperature: float = 0.1
    """NT-Xent's temperature (the paper's 0.1 for ImageNet, 0.5 for CIFAR-10)."""

    pool: Literal["mean", "cls"] = "mean"
    """The encoder output each view is reduced to: the mean of the tokens, or the CLS token (encoders
    without one, speech and text, use the mean)."""

    def validate(self, where: str = "method") -> None:
        self.projector.validate(f"{where}.projector")
        if self.temperature <= 0:
            raise ValueError(f"{where}.temperature must be > 0, got {self.temperature}")


class SimCLR(Method):
    """The encoder and its projector; ``forward(views)`` takes the view collator's batch."""

    name = "simclr"
    config_class = SimCLRConfig

    @classmethod
    def student_view(cls, cfg: SimCLRConfig) -> StudentView:
        return StudentView(dense=False, views=True)

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: SimCLRConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        self.projector = global_batch_norm(mlp(encoder.dim, cfg.projector))
        self.projector.apply(bert_init)

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """One pooled vector per sample of a view (B, D)."""
        x, pad = self.encoder.encode(inputs)
        return pool(x, pad, self.encoder.num_extra, self.cfg.pool)

    def projections(self, views: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the pooled vectors of every view (V, B, D), their projections (V, B, P)). The views go through
        the projector together, so its batch norm sees every view of the batch, as SimCLR's does."""
        if len(views) < 2 and not type(self).labels:
            raise ValueError(f"method {self.name}: needs 2 views of each sample or more, got {len(views)} "
                             "(views.global_crops, views.crops or views.copies)")
        pooled = [self.embed(v) for v in views]
        if len({p.shape[0] for p in pooled}) != 1:
            raise ValueError(f"method {self.name}: the views hold different numbers of samples")
        h = torch.stack(pooled)
        z = self.projector(h.reshape(-1, h.shape[-1])).reshape(h.shape[0], h.shape[1], -1)
        return h, z

    def loss(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """NT-Xent of two views (V, B, P); more views: each sample's other views are its positives."""
        if z.shape[0] == 2:
            return ntxent_loss(z[0], z[1], self.cfg.temperature, gather=True)
        ids = torch.arange(z.shape[1], device=z.device) + rows_before(z.shape[1], z.device)  # unique over ranks
        return supcon_loss(z.transpose(0, 1), ids, self.cfg.temperature, gather=True)

    def forward(self, views: list[dict[str, torch.Tensor]], labels: torch.Tensor | None = None,
                **_: object) -> dict[str, torch.Tensor]:
        h, z = self.projections(views)
        return {"loss": self.loss(z, labels), "pred_var": compute_var(z.reshape(-1, z.shape[-1])),
                "student_rank": effective_rank(h[0])}

    @classmethod
    def card_title(cls, cfg: SimCLRConfig) -> str:
        return "SimCLR (contrastive learning between augmented views)"

    @classmethod
    def card_objective(cls, cfg: SimCLRConfig, mask: Any) -> str:
        return (f"NT-Xent between augmented views (temperature {cfg.temperature}), negatives from the global batch, "
                f"a {cfg.projector.layers}-layer projector to {cfg.projector.out_dim} (not exported); "
                f"{cfg.pool}-pooled encoder output")
