"""The encoder every objective trains: a modality's local encoder and context (positions, extra
tokens), the shared blocks, and a final norm for pre-LN stacks; and the small sequence operations
objectives need around it (pooling, dropping masked tokens and putting them back)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from multissl.core.adapter import Modality
from multissl.core.blocks import Blocks, EncoderConfig
from multissl.core.init import reference_init


class Encoder(nn.Module):
    """local -> context (positions, extra tokens) -> blocks -> norm (pre-LN stacks only)."""

    def __init__(self, modality: Modality, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.num_extra = modality.num_extra_tokens
        self.local = modality.build_local(cfg)
        self.context = modality.build_context(cfg)
        self.blocks = Blocks(cfg)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps) if cfg.norm == "pre" else nn.Identity()
        reference_init(self)

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """All hidden states (the block input, then each block's output) and the padding mask
        (B, E + T), as Hugging Face's ``output_hidden_states`` lays them out; the model's output is
        ``encoder.norm(states[-1])`` (the final LayerNorm of pre-LN stacks, identity for post-LN).

        Extra tokens (CLS) stay in, as they do in the HF classes.
        """
        feats, pad = self.local(inputs)
        x = self.context(feats, pad)
        pad = extend_padding(pad, self.num_extra)
        states = [x]
        for block in self.blocks:
            x, _ = block(x, pad)
            states.append(x)
        return states, pad

    def encode(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's output (B, E + T, D), final norm applied, and its padding mask (B, E + T)."""
        states, pad = self(inputs)
        return self.norm(states[-1]), pad


def mean_over(x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """(B, T, D) averaged over each row's non-padding positions (True in ``pad`` is padding)."""
    valid = (~pad).unsqueeze(-1).to(x.dtype)
    return (x * valid).sum(1) / valid.sum(1).clamp_min(1)


def extend_padding(pad: torch.Tensor, n: int) -> torch.Tensor:
    """Padding mask with ``n`` non-padding extra tokens in front."""
    if n == 0:
        return pad
    return torch.cat([pad.new_zeros(pad.shape[0], n), pad], dim=1)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Run shared student modules without dropout for the teacher pass, then restore their mode."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


def gather_kept(
    x: torch.Tensor, pad: torch.Tensor, mask: torch.Tensor, extra: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop masked and padded tokens (extra tokens always stay). Returns the shorter sequence, its
    padding mask, and ``keep`` (N, T), True where a token was kept, for :func:`scatter_kept`."""
    body = x[:, extra:]
    keep = ~(mask | pad[:, extra:])
    n_keep = int(keep.sum(1).max())
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :n_keep]
    kept = body.gather(1, order.unsqueeze(-1).expand(-1, -1, body.shape[-1]))
    kept_pad = ~keep.gather(1, order)
    return torch.cat([x[:, :extra], kept], 1), torch.cat([pad[:, :extra], kept_pad], 1), keep


def scatter_kept(kept: torch.Tensor, kept_pad: torch.Tensor, keep: torch.Tensor, noise_std: float) -> torch.Tensor:
    """Put kept tokens back at their positions; every other position gets N(0, noise_std) noise."""
    n, t = keep.shape
    full = torch.randn(n, t, kept.shape[-1], device=kept.device, dtype=kept.dtype) * noise_std
    return full.index_put((keep,), kept[~kept_pad])
