"""The masked autoencoder's decoder (He et al. 2022, "Masked Autoencoders Are Scalable Vision
Learners", arXiv 2111.06377, section 3 "MAE decoder"): the encoder output of the visible patches is
projected to the decoder width, a shared learned mask token fills every masked position, fixed 2-D
sin-cos positions are added to all tokens, a few pre-LN transformer blocks run over the full set, and
a linear layer predicts each patch's pixels.

Laid out so that its state dict maps one to one onto transformers' ``ViTMAEDecoder`` (see
:func:`to_hf_decoder_state`); with the same weights it computes the same ``logits``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from multissl.core.blocks import Blocks, EncoderConfig
from multissl.core.hf_names import from_hf_names, to_hf_names
from multissl.core.init import BERT_STD, bert_init
from multissl.core.positions import sincos_2d

# multissl block tensor -> ViTMAELayer module (transformers 5 names)
HF_DECODER_BLOCK_NAMES = {
    "q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj", "out": "attention.o_proj",
    "norm1": "layernorm_before", "fc1": "mlp.fc1", "fc2": "mlp.fc2", "norm2": "layernorm_after",
}
# MAEDecoder key -> ViTMAEDecoder key, outside the blocks (the positions are fixed and not in our state)
HF_DECODER_NAMES = {
    "embed.weight": "decoder_embed.weight", "embed.bias": "decoder_embed.bias", "mask_token": "mask_token",
    "norm.weight": "decoder_norm.weight", "norm.bias": "decoder_norm.bias",
    "pred.weight": "decoder_pred.weight", "pred.bias": "decoder_pred.bias",
}
HF_DECODER_POSITIONS = "decoder_pos_embed"
# transformers 4 / Hub checkpoint layer names -> transformers 5 (what its loader renames); longest first
_LEGACY_BLOCK_NAMES = (
    ("attention.attention.query", "attention.q_proj"), ("attention.attention.key", "attention.k_proj"),
    ("attention.attention.value", "attention.v_proj"), ("attention.output.dense", "attention.o_proj"),
    ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"),
)


@dataclass
class MAEDecoderConfig:
    """Shape of the MAE decoder; the defaults are the paper's (8 blocks of width 512, 16 heads, MLP
    ratio 4), which are also ``ViTMAEConfig``'s ``decoder_*`` defaults."""

    dim: int = 512
    """Decoder width (``decoder_hidden_size``); a multiple of 4 for the sin-cos positions."""

    depth: int = 8
    """Number of decoder blocks (``decoder_num_hidden_layers``)."""

    heads: int = 16
    """Attention heads (``decoder_num_attention_heads``)."""

    ffn_dim: int = 2048
    """Hidden size of the feed-forward layer (``decoder_intermediate_size``)."""

    eps: float = 1e-6
    """LayerNorm epsilon: 1e-6 in the reference code; ``ViTMAEConfig.layer_norm_eps`` defaults to 1e-12."""

    def validate(self, where: str = "decoder") -> None:
        """Raise ``ValueError`` naming the offending key (``{where}.dim`` ...)."""
        for key in ("dim", "depth", "heads", "ffn_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")
        if self.dim % self.heads:
            raise ValueError(f"{where}.dim ({self.dim}) must be divisible by {where}.heads ({self.heads})")
        if self.dim % 4:
            raise ValueError(f"{where}.dim ({self.dim}) must be a multiple of 4 for sin-cos positions")
        if not self.eps > 0:
            raise ValueError(f"{where}.eps must be > 0, got {self.eps}")

    def blocks(self) -> EncoderConfig:
        """The pre-LN block stack (a ViT layer each, no dropout, no layer scale)."""
        return EncoderConfig(dim=self.dim, depth=self.depth, heads=self.heads, ffn_dim=self.ffn_dim, norm="pre",
                             eps=self.eps, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def mae_sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """MAE's fixed 2-D positions with a zero CLS row first: (1 + height * width, dim), patches in
    raster order. The first half of each vector encodes the patch's column as [sin | cos] over
    ``dim // 4`` frequencies from 1 to 1/10000, the second half its row, which is the layout of the
    reference ``get_2d_sincos_pos_embed`` and of transformers' ``ViTMAEDecoder.decoder_pos_embed``.
    (The vision adapter's positions put the row first: its halves are swapped.)

    >>> p = mae_sincos_2d(2, 3, 8)
    >>> p.shape, p[0].abs().sum().item(), p[1 + 4].tolist()[:2], p[1 + 4].tolist()[4:6]  # row 1, column 1
    (torch.Size([7, 8]), 0.0, [0.8414709568023682, 0.009999833069741726], [0.8414709568023682, 0.009999833069741726])
    """
    return torch.cat([torch.zeros(1, dim), sincos_2d(height, width, dim, column_first=True)])


class MAEDecoder(nn.Module):
    """The MAE decoder over a ``grid`` of (rows, columns) patches of ``patch`` pixels and ``channels``.

    Parts (HF ``ViTMAEDecoder`` name): ``embed`` (decoder_embed), ``mask_token`` (mask_token),
    ``positions`` (decoder_pos_embed; a fixed, non-persistent buffer), ``blocks`` (decoder_layers),
    ``norm`` (decoder_norm), ``pred`` (decoder_pred).

    >>> dec = MAEDecoder(MAEDecoderConfig(dim=16, depth=1, heads=2, ffn_dim=32), enc_dim=24, grid=(2, 2), patch=4)
    >>> keep = torch.tensor([[True, False, False, True]])
    >>> dec(torch.randn(1, 1 + 2, 24), keep).shape
    torch.Size([1, 4, 48])
    """

    def __init__(self, cfg: MAEDecoderConfig, enc_dim: int, grid: tuple[int, int], patch: int, channels: int = 3):
        super().__init__()
        cfg.validate("decoder")
        self.cfg, self.grid, self.patch, self.channels = cfg, tuple(grid), patch, channels
        self.embed = nn.Linear(enc_dim, cfg.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.register_buffer("positions", mae_sincos_2d(grid[0], grid[1], cfg.dim)[None], persistent=False)
        self.blocks = Blocks(cfg.blocks())
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.pred = nn.Linear(cfg.dim, patch * patch * channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """transformers' initialisation: Linear weights and the mask token from N(0, 0.02), biases 0,
        LayerNorms 1 and 0 (the reference code draws the Linear weights Xavier-uniform instead)."""
        self.apply(bert_init)
        nn.init.normal_(self.mask_token, std=BERT_STD)

    def forward(self, kept: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Pixel predictions (N, L, patch * patch * channels) for all L patches, CLS dropped.

        ``kept`` (N, 1 + K, enc_dim) is the encoder output for CLS and the K kept patches in their
        original position order; ``keep`` (N, L) is True where a patch was kept, K in every row.
        """
        n, length = keep.shape
        k = kept.shape[1] - 1
        if length != self.positions.shape[1] - 1 or kept.shape[0] != n:
            raise ValueError(f"MAEDecoder: keep {tuple(keep.shape)} does not match {n} images of "
                             f"{self.positions.shape[1] - 1} patches")
        keep = keep.bool()
        if bool((keep.sum(1) != k).any()):
            raise ValueError(f"MAEDecoder: every row of keep must keep exactly {k} patches (kept has 1 + {k} tokens)")
        x = self.embed(kept)
        tokens = self.mask_token.to(x.dtype).expand(n, length, -1).masked_scatter(keep[..., None], x[:, 1:])
        x = torch.cat([x[:, :1], tokens], 1) + self.positions.to(x.dtype)
        x, _, _ = self.blocks(x)
        return self.pred(self.norm(x))[:, 1:]


def _decoder_state_check(state: dict[str, torch.Tensor], cfg: MAEDecoderConfig, where: str) -> None:
    for i in range(cfg.depth):
        if not any(key.startswith(f"{where}{i}.") for key in state):
            raise ValueError(f"decoder state: no weights for block {i} ({where}{i}.*); decoder.depth is {cfg.depth}")


def to_hf_decoder_state(
    state: dict[str, torch.Tensor], cfg: MAEDecoderConfig, grid: tuple[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """An :class:`MAEDecoder` state dict in ``ViTMAEDecoder`` names (transformers 5: ``decoder_embed``,
    ``mask_token``, ``decoder_pos_embed``, ``decoder_layers.{i}.attention.q_proj`` ..., ``decoder_norm``,
    ``decoder_pred``). ``decoder_pos_embed`` comes from ``state["positions"]`` when present, else from
    ``grid`` (rows, columns) when given, else is left out.

    >>> dec = MAEDecoder(MAEDecoderConfig(dim=16, depth=1, heads=2, ffn_dim=32), 24, (2, 2), 4)
    >>> sorted(to_hf_decoder_state(dec.state_dict(), dec.cfg, dec.grid))[:3]
    ['decoder_embed.bias', 'decoder_embed.weight', 'decoder_layers.0.attention.k_proj.bias']
    """
    _decoder_state_check(state, cfg, "blocks.")
    out = to_hf_names(state, HF_DECODER_NAMES, HF_DECODER_BLOCK_NAMES, "decoder_layers.", cfg.depth)
    if "positions" in state:
        out[HF_DECODER_POSITIONS] = state["positions"]
    elif grid is not None:
        out[HF_DECODER_POSITIONS] = mae_sincos_2d(grid[0], grid[1], cfg.dim)[None]
    return out


def from_hf_decoder_state(sd: dict[str, torch.Tensor], cfg: MAEDecoderConfig) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_hf_decoder_state`: a ``ViTMAEDecoder`` state dict (keys without the
    ``decoder.`` prefix of ``ViTMAEForPreTraining``; transformers 4 / Hub layer names such as
    ``attention.attention.query`` are accepted too) as :class:`MAEDecoder` keys, ready for
    ``load_state_dict``. ``decoder_pos_embed`` is dropped: the decoder rebuilds the fixed table.

    >>> dec = MAEDecoder(MAEDecoderConfig(dim=16, depth=1, heads=2, ffn_dim=32), 24, (2, 2), 4)
    >>> hf = to_hf_decoder_state(dec.state_dict(), dec.cfg)
    >>> dec.load_state_dict(from_hf_decoder_state(hf, dec.cfg))
    <All keys matched successfully>
    """
    renamed = {}
    for key, t in sd.items():
        if key.startswith("decoder_layers."):
            for old, new in _LEGACY_BLOCK_NAMES:
                if f".{old}." in key:
                    key = key.replace(f".{old}.", f".{new}.")
                    break
        renamed[key] = t
    _decoder_state_check(renamed, cfg, "decoder_layers.")
    try:
        return from_hf_names(renamed, HF_DECODER_NAMES, HF_DECODER_BLOCK_NAMES, "decoder_layers.", cfg.depth,
                             "ViTMAEDecoder state")
    except KeyError as e:
        raise ValueError(f"ViTMAEDecoder state: missing weight {e.args[0]}") from None
