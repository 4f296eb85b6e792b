"""Teacher targets: the average of the top-K layer outputs, each normalised without parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from multissl.core.distributed import all_sum

TargetNorm = Literal["instance", "layer", "none"]


def instance_norm(x: torch.Tensor, padding_mask: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Normalise each channel over time, per sample: ``x`` is (B, T, D), ``padding_mask`` (B, T) is
    True at padding, which is left out of the statistics (and set to zero).

    >>> y = instance_norm(torch.randn(2, 5, 3))
    >>> bool(y.mean(1).abs().max() < 1e-5)
    True
    """
    if padding_mask is None:
        return F.instance_norm(x.transpose(1, 2), eps=eps).transpose(1, 2)
    valid = (~padding_mask).unsqueeze(-1).to(x.dtype)
    n = valid.sum(1, keepdim=True).clamp_min(1.0)
    mean = (x * valid).sum(1, keepdim=True) / n
    var = (((x - mean) * valid) ** 2).sum(1, keepdim=True) / n
    return (x - mean) * torch.rsqrt(var + eps) * valid


def normalise(x: torch.Tensor, kind: TargetNorm, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the parameter-free norm ``kind`` to a (B, T, D) tensor."""
    if kind == "instance":
        return instance_norm(x, padding_mask)
    if kind == "layer":
        return F.layer_norm(x, x.shape[-1:])
    return x


def build_targets(
    layer_outputs: Sequence[torch.Tensor],
    top_k: int,
    layer_norm: TargetNorm = "instance",
    final_norm: TargetNorm = "none",
    padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Average the top ``top_k`` of ``layer_outputs`` (each (B, T, D)) after a per-layer norm, in fp32,
    then apply ``final_norm``.

    >>> outs = [torch.randn(2, 4, 8) for _ in range(3)]
    >>> build_targets(outs, top_k=2).shape
    torch.Size([2, 4, 8])
    """
    if not 1 <= top_k <= len(layer_outputs):
        raise ValueError(f"top_k={top_k} but the teacher has {len(layer_outputs)} layers")
    y = None
    for out in layer_outputs[-top_k:]:
        out = normalise(out.float(), layer_norm, padding_mask)
        y = out if y is None else y + out
    y = y / top_k
    return normalise(y, final_norm, padding_mask)


def center_positions(y: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Subtract from each target (B, T, D) the mean target at its position over the batch (every
    rank's rows; padding, True in ``padding_mask``, left out and left zero): what the position alone
    predicts is taken out, so the student is not rewarded for encoding where a token is.

    >>> y = torch.randn(4, 3, 2) + torch.arange(3.0)[None, :, None]
    >>> bool(center_positions(y).mean(0).abs().max() < 1e-6)
    True
    """
    valid = torch.ones(y.shape[:2], dtype=torch.bool, device=y.device) if padding_mask is None else ~padding_mask
    w = valid.unsqueeze(-1).to(y.dtype)
    sums = all_sum(torch.cat([(y * w).sum(0), w.sum(0)], -1))
    mean = sums[:, :-1] / sums[:, -1:].clamp_min(1)
    return (y - mean) * w
