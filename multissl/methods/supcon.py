"""Supervised contrastive learning (Khosla et al. 2020, "Supervised Contrastive Learning",
arXiv 2004.11362): SimCLR's encoder, views and projector, with labels: every other embedding of the
global batch with the anchor's label is a positive (the paper's L_out, eq. 2), not only the other views
of the same sample. Labels come from ``data.label_column`` (``--label-column``). Views are the
modality's: crops and colour for images, dropout copies of each sentence for text. A label seen once
in a batch still has the sample's other views as positives. No teacher; the projector is dropped at
export.

Data parallelism as SimCLR: embeddings and labels gathered from every rank (with gradient), the
projector's batch norm over the global batch.

>>> model = SupCon(vision_adapter, EncoderConfig(), SupConConfig())  # doctest: +SKIP
>>> model(**view_collator(labelled_examples))["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from multissl.core.heads import MLPConfig
from multissl.core.losses.supcon import supcon_loss
from multissl.methods.simclr import SimCLR, simclr_projector


@dataclass
class SupConConfig:
    """SupCon: SimCLR's projector on the pooled encoder output, the supervised contrastive loss."""

    name: Literal["supcon"] = "supcon"
    """The objective."""

    projector: MLPConfig = field(default_factory=simclr_projector)
    """The projector MLP (2 layers, batch norm, output 128, as the paper's); dropped at export."""

    temperature: float = 0.1
    """The loss's temperature (the paper's 0.1)."""

    pool: Literal["mean", "cls"] = "mean"
    """The encoder output each view is reduced to: the mean of the tokens, or the CLS token (encoders
    without one, speech and text, use the mean)."""

    def validate(self, where: str = "method") -> None:
        self.projector.validate(f"{where}.projector")
        if self.temperature <= 0:
            raise ValueError(f"{where}.temperature must be > 0, got {self.temperature}")


class SupCon(SimCLR):
    """The encoder and its projector; ``forward(views, labels)`` takes the view collator's labelled batch."""

    name = "supcon"
    config_class = SupConConfig
    labels = True

    def loss(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError("method supcon: the batch has no labels: data.label_column is read from text tables, "
                             "image tables and image datasets folders only")
        return supcon_loss(z.transpose(0, 1), labels, self.cfg.temperature, gather=True)

    @classmethod
    def card_tags(cls, cfg: SupConConfig) -> list[str]:
        return ["supcon", "supervised-contrastive"]

    @classmethod
    def card_title(cls, cfg: SupConConfig) -> str:
        return "supervised contrastive learning (SupCon)"

    @classmethod
    def card_objective(cls, cfg: SupConConfig, mask: Any) -> str:
        return (f"supervised contrastive loss (L_out, temperature {cfg.temperature}) between views, every sample "
                f"of the same label a positive; a {cfg.projector.layers}-layer projector to "
                f"{cfg.projector.out_dim} (not exported); {cfg.pool}-pooled encoder output")
