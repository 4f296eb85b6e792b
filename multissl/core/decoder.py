"""What turns student outputs into predictions of the targets: the v1 regression head and the
v2 light convolutional decoder."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def projection(dim_in: int, dim_out: int, layers: int = 1, ratio: float = 2.0) -> nn.Module:
    """A Linear, or Linear -> GELU -> Linear with a hidden size of ``ratio * dim_in``.

    >>> projection(4, 4, layers=2)[0].out_features
    8
    """
    if layers == 1:
        return nn.Linear(dim_in, dim_out)
    hidden = int(dim_in * ratio)
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, dim_out))


@dataclass
class DecoderConfig:
    """The data2vec 2.0 convolutional decoder."""

    layers: int = 5
    """Number of conv layers."""

    kernel: int = 9
    """Conv kernel size (odd)."""

    dim: int = 768
    """Channels of the conv layers."""

    groups: int = 1
    """Conv groups."""

    residual: bool = False
    """Residual around each conv layer whose input and output sizes match."""

    projection_layers: int = 2
    """1: Linear(dim, D); 2: Linear(dim, 2*dim) -> GELU -> Linear(2*dim, D)."""

    input_dropout: float = 0.1
    """Dropout on the encoder output before the decoder."""

    def validate(self, where: str = "method.decoder") -> None:
        if self.kernel % 2 == 0:
            raise ValueError(f"{where}.kernel must be odd, got {self.kernel}")
        if self.dim % self.groups:
            raise ValueError(f"{where}.dim ({self.dim}) must be divisible by {where}.groups ({self.groups})")


class _ConvDecoder(nn.Module, ABC):
    """Input dropout, ``cfg.layers`` convolutions of ``conv_type``, and the projection to the targets."""

    conv_type: type[nn.Module]

    def __init__(self, cfg: DecoderConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.dropout = nn.Dropout(cfg.input_dropout)
        self.convs = nn.ModuleList(
            self.conv_type(embed_dim if i == 0 else cfg.dim, cfg.dim, cfg.kernel, padding=cfg.kernel // 2,
                           groups=cfg.groups)
            for i in range(cfg.layers)
        )
        self.proj = projection(cfg.dim, embed_dim, cfg.projection_layers)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.features(x, padding_mask))

    @abstractmethod
    def features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder features before ``proj`` (the model projects only the masked positions)."""


class Decoder1d(_ConvDecoder):
    """Conv1d -> LayerNorm (no affine) -> GELU layers over time, then a projection to the target size.

    >>> Decoder1d(DecoderConfig(layers=2, dim=8, kernel=3), 16)(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    """

    conv_type = nn.Conv1d

    def features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder features before ``proj``; the model projects only the masked positions."""
        x = self.dropout(x)
        keep = None if padding_mask is None else (~padding_mask).unsqueeze(1).to(x.dtype)  # (N, 1, T)
        x = x.transpose(1, 2)
        for conv in self.convs:
            if keep is not None:  # padding reads as zeros at every layer, as if the row were alone
                x = x * keep
            h = F.gelu(F.layer_norm(conv(x).transpose(1, 2), (conv.out_channels,)).transpose(1, 2))
            x = x + h if self.cfg.residual and h.shape == x.shape else h
        return x.transpose(1, 2)


class Decoder2d(_ConvDecoder):
    """Conv2d -> LayerNorm over channels (no affine) -> GELU layers on the (H, W) patch grid, then a
    projection to the target size (data2vec 2.0 images). Tokens come in and go out as (N, H*W, D).

    >>> Decoder2d(DecoderConfig(layers=2, dim=8, kernel=3), 16, (4, 4))(torch.randn(2, 16, 16)).shape
    torch.Size([2, 16, 16])
    """

    conv_type = nn.Conv2d

    def __init__(self, cfg: DecoderConfig, embed_dim: int, grid: tuple[int, int]):
        super().__init__(cfg, embed_dim)
        self.grid = grid

    def features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder features before ``proj``; the model projects only the masked positions."""
        n, t, d = x.shape
        x = self.dropout(x).transpose(1, 2).reshape(n, d, *self.grid)
        for conv in self.convs:
            h = F.gelu(F.layer_norm(conv(x).permute(0, 2, 3, 1), (conv.out_channels,)).permute(0, 3, 1, 2))
            x = x + h if self.cfg.residual and h.shape == x.shape else h
        return x.flatten(2).transpose(1, 2)
