"""Transformer blocks shared by every modality (post-LN as in RoBERTa / data2vec audio, pre-LN as
in ViT / BEiT), on ``scaled_dot_product_attention`` with padding masks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EncoderConfig:
    """Shape of the shared transformer stack."""

    dim: int = 768
    """Hidden size."""

    depth: int = 12
    """Number of blocks."""

    heads: int = 12
    """Attention heads."""

    ffn_dim: int = 3072
    """Hidden size of the feed-forward layer."""

    norm: Literal["post", "pre"] = "post"
    """post: LayerNorm after each residual (RoBERTa, data2vec audio); pre: before (ViT, BEiT)."""

    layer_scale: float = 0.0
    """Initial per-channel layer scale (BEiT); 0 disables it."""

    eps: float = 1e-5
    """LayerNorm epsilon."""

    dropout: float = 0.1
    """Dropout on the attention and feed-forward outputs."""

    attention_dropout: float = 0.1
    """Dropout on the attention weights."""

    activation_dropout: float = 0.0
    """Dropout after the feed-forward activation."""

    def validate(self, where: str = "encoder") -> None:
        if self.dim % self.heads:
            raise ValueError(f"{where}.dim ({self.dim}) must be divisible by {where}.heads ({self.heads})")
        for key in ("dim", "depth", "heads", "ffn_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """One transformer block. ``forward`` returns ``(x, ffn)``: the block output and the feed-forward
    output before its residual (the data2vec target tensor)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.attn = Attention(cfg.dim, cfg.heads, cfg.attention_dropout)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.act_drop = nn.Dropout(cfg.activation_dropout)
        if cfg.layer_scale > 0:
            self.gamma1 = nn.Parameter(torch.full((cfg.dim,), cfg.layer_scale))
            self.gamma2 = nn.Parameter(torch.full((cfg.dim,), cfg.layer_scale))
        else:
            self.gamma1 = self.gamma2 = None

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act_drop(F.gelu(self.fc1(x)))))

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pre:
            a = self.drop(self.attn(self.norm1(x), padding_mask))
            x = x + (a if self.gamma1 is None else self.gamma1 * a)
            h = self._ffn(self.norm2(x))
            x = x + (h if self.gamma2 is None else self.gamma2 * h)
            return x, h
        x = self.norm1(x + self.drop(self.attn(x, padding_mask)))
        h = self._ffn(x)
        return self.norm2(x + h), h


class Blocks(nn.ModuleList):
    """A stack of blocks that also returns every block's feed-forward output and block output."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__([Block(cfg) for _ in range(cfg.depth)])

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        ffn, out = [], []
        for block in self:
            x, h = block(x, padding_mask)
            ffn.append(h)
            out.append(x)
        return x, ffn, out
