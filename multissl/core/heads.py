"""Heads that objectives put on top of the encoder's pooled output: the projector and predictor MLPs of
the contrastive and self-distillation families (SimCLR, BYOL, SimSiam, MoCo v3, Barlow Twins, VICReg)
and DINO's prototype head. Heads are initialised like the encoder (``bert_init``) unless their paper
says otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from multissl.core.encoder import mean_over


@dataclass
class MLPConfig:
    """A projector or predictor: ``layers`` Linear layers, each but the last followed by a norm and an
    activation."""

    layers: int = 2
    """Linear layers (>= 1)."""

    hidden_dim: int = 2048
    """Width of the hidden layers."""

    out_dim: int = 256
    """Output width."""

    norm: Literal["batch", "layer", "none"] = "batch"
    """Norm after each hidden Linear: batch norm (SimCLR, BYOL), layer norm, or none."""

    activation: Literal["relu", "gelu"] = "relu"
    """Activation after each hidden norm."""

    last_norm: bool = False
    """A batch norm without affine parameters after the last Linear (SimSiam's projector, MoCo v3)."""

    def validate(self, where: str) -> None:
        if self.layers < 1:
            raise ValueError(f"{where}.layers must be >= 1, got {self.layers}")
        if self.hidden_dim < 1 or self.out_dim < 1:
            raise ValueError(f"{where}.hidden_dim and {where}.out_dim must be >= 1")


def mlp(in_dim: int, cfg: MLPConfig) -> nn.Sequential:
    """The MLP ``cfg`` describes, from ``in_dim`` features.

    >>> mlp(8, MLPConfig(layers=2, hidden_dim=16, out_dim=4))(torch.randn(3, 8)).shape
    torch.Size([3, 4])
    """
    dims = [in_dim] + [cfg.hidden_dim] * (cfg.layers - 1) + [cfg.out_dim]
    out: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        last = i == len(dims) - 2
        out.append(nn.Linear(a, b, bias=not (last and cfg.last_norm)))
        if not last:
            if cfg.norm == "batch":
                out.append(nn.BatchNorm1d(b))
            elif cfg.norm == "layer":
                out.append(nn.LayerNorm(b))
            out.append(nn.ReLU() if cfg.activation == "relu" else nn.GELU())
        elif cfg.last_norm:
            out.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*out)


@dataclass
class PrototypeHeadConfig:
    """DINO's head (Caron et al. 2021): an MLP to a bottleneck, l2-normalisation, then a Linear layer
    without bias whose weight rows are normalised too (weight normalisation with its gain fixed at 1,
    the paper's ``norm_last_layer``), so that each output is a cosine similarity to a prototype."""

    hidden_dim: int = 2048
    """Width of the MLP's hidden layers."""

    bottleneck_dim: int = 256
    """Width of the l2-normalised bottleneck."""

    layers: int = 3
    """Linear layers of the MLP (the paper: 3)."""

    prototypes: int = 65536
    """K: outputs of the last layer (the paper: 65,536 for ViT-S)."""

    def validate(self, where: str) -> None:
        for key in ("hidden_dim", "bottleneck_dim", "layers", "prototypes"):
            if getattr(self, key) < 1:
                raise ValueError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")


class PrototypeHead(nn.Module):
    """(N, D) features -> (N, K) scores against ``prototypes`` unit vectors, from a unit bottleneck.

    >>> head = PrototypeHead(8, PrototypeHeadConfig(hidden_dim=16, bottleneck_dim=4, prototypes=5))
    >>> scores = head(torch.randn(3, 8)); scores.shape, bool(scores.abs().max() <= 1 + 1e-6)
    (torch.Size([3, 5]), True)
    """

    def __init__(self, in_dim: int, cfg: PrototypeHeadConfig):
        super().__init__()
        self.mlp = mlp(in_dim, MLPConfig(layers=cfg.layers, hidden_dim=cfg.hidden_dim, out_dim=cfg.bottleneck_dim,
                                         norm="none", activation="gelu"))
        self.prototypes = nn.Parameter(torch.empty(cfg.prototypes, cfg.bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # DINO's head: truncated normal(0.02) weights, zero biases
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor, frozen_prototypes: bool = False) -> torch.Tensor:
        """Scores (N, K); ``frozen_prototypes`` gives the prototypes a zero gradient (DINO freezes them
        early in training) while keeping them in the graph, so that DDP still finds a gradient for them."""
        z = F.normalize(self.mlp(x), dim=-1)
        w = self.prototypes.detach() + 0.0 * self.prototypes if frozen_prototypes else self.prototypes
        return z @ F.normalize(w, dim=-1).t()


def pool(x: torch.Tensor, pad: torch.Tensor, num_extra: int, how: Literal["cls", "mean"]) -> torch.Tensor:
    """One vector per sample from an encoder's output ``x`` (B, E + T, D) and padding (B, E + T): the
    first extra token (``cls``; encoders without one fall back to the mean) or the mean over the
    non-padding tokens after the extra ones.

    >>> pool(torch.arange(6.0).view(1, 3, 2), torch.tensor([[False, False, True]]), 1, "mean").tolist()
    [[2.0, 3.0]]
    """
    if how == "cls" and num_extra > 0:
        return x[:, 0]
    return mean_over(x[:, num_extra:], pad[:, num_extra:])
