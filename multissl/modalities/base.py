"""The adapter contract. A modality adapter owns only what differs between modalities: its local
encoder, its positional scheme, its decoder, what the EMA teacher shares with the student, and its
mapping to and from a Hugging Face class. Adapters register by name; the core never asks which
modality it is running."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from multissl.core.blocks import EncoderConfig
from multissl.core.decoder import Decoder1d, DecoderConfig

# The parts of an encoder, in the order data flows through them.
PARTS = ("local", "context", "blocks", "norm")


class Modality(ABC):
    """Builds the modality-specific parts of an encoder.

    ``local(inputs) -> (features (B, T, D), padding_mask (B, T))`` turns raw inputs into tokens; it may
    own a ``mask_embedding`` parameter that replaces masked tokens in dense (v1) mode.
    ``context(features, padding_mask, mask=None) -> (B, E + T, D)`` adds positions and the ``E``
    extra tokens (CLS, ...); it receives the mask in sparse (v2) mode, before masked tokens are dropped.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    num_extra_tokens: int = 0
    hf_untrained: tuple[str, ...] = ("pooler.",)
    """HF parameter prefixes that pretraining does not produce (left at the HF initialisation)."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    @abstractmethod
    def build_local(self, enc: EncoderConfig) -> nn.Module: ...

    @abstractmethod
    def build_context(self, enc: EncoderConfig) -> nn.Module: ...

    def build_decoder(self, cfg: DecoderConfig, dim: int) -> nn.Module:
        """The v2 decoder; 1-D convolutions over the token sequence unless the modality says otherwise.
        It has ``features(x, padding_mask)`` over all positions and a ``proj`` module that the model
        applies to the masked positions only."""
        return Decoder1d(cfg, dim)

    def ema_split(self, version: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(parts the teacher shares with the student, parameter prefixes it copies instead of averaging)."""
        return (), ()

    @abstractmethod
    def prepare(self, recipe: Any) -> tuple[Any, Any, Any]:
        """(train dataset, collator, preprocessor) for a recipe; completes ``self.cfg`` from the data
        (token ids, sample rate, ...). The preprocessor (tokenizer, feature extractor, image
        processor) has ``save_pretrained`` and is exported beside the model."""

    @abstractmethod
    def hf_config(self, enc: EncoderConfig, arch: str | None = None) -> Any:
        """The Hugging Face config of the exported encoder; ``arch`` picks among the classes that
        hold it exactly (None: the adapter's default)."""

    @abstractmethod
    def load_preprocessor(self, folder: str | Path) -> Any:
        """The preprocessor saved in an HF folder (tokenizer, feature extractor, image processor)."""

    @abstractmethod
    def example_inputs(self, preprocessor: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(HF model kwargs, multissl encoder inputs) for the same small real batch, with padding,
        used to check an export."""

    @abstractmethod
    def to_hf_state_dict(self, state: dict[str, torch.Tensor], enc: EncoderConfig) -> dict[str, torch.Tensor]:
        """Encoder state dict (keys ``local.*``, ``context.*``, ``blocks.*``, ``norm.*``) in HF names."""

    @abstractmethod
    def from_hf(self, folder: str) -> tuple[EncoderConfig, dict[str, torch.Tensor]]:
        """Read an HF model folder: the encoder shape and an encoder state dict in multissl names."""


MODALITIES: dict[str, type[Modality]] = {}


def register(cls: type[Modality]) -> type[Modality]:
    """Class decorator that makes an adapter available by its ``name``."""
    MODALITIES[cls.name] = cls
    return cls


def get_modality(name: str) -> type[Modality]:
    """The adapter class registered as ``name``.

    >>> get_modality("text").name
    'text'
    """
    import multissl.modalities  # noqa: F401  (registers the built-in adapters)

    if name not in MODALITIES:
        raise KeyError(f"modality: unknown {name!r}; known: {', '.join(sorted(MODALITIES))}")
    return MODALITIES[name]


def block_tensors(state: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Block ``i`` of an encoder state dict with the fused qkv split: keys q/k/v/out/norm1/fc1/fc2/norm2,
    each followed by ``.weight`` or ``.bias``; adapters rename them to their HF class."""
    p = f"blocks.{i}."
    out: dict[str, torch.Tensor] = {}
    for kind in ("weight", "bias"):
        q, k, v = state[p + f"attn.qkv.{kind}"].chunk(3, dim=0)
        out.update({f"q.{kind}": q, f"k.{kind}": k, f"v.{kind}": v, f"out.{kind}": state[p + f"attn.proj.{kind}"]})
        for name in ("norm1", "fc1", "fc2", "norm2"):
            out[f"{name}.{kind}"] = state[p + f"{name}.{kind}"]
    for name in ("gamma1", "gamma2"):
        if p + name in state:
            out[name] = state[p + name]
    return out


def fuse_block(parts: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """The inverse of :func:`block_tensors`: multissl block ``i`` keys from q/k/v/out/... tensors."""
    p = f"blocks.{i}."
    out: dict[str, torch.Tensor] = {}
    for kind in ("weight", "bias"):
        out[p + f"attn.qkv.{kind}"] = torch.cat([parts[f"q.{kind}"], parts[f"k.{kind}"], parts[f"v.{kind}"]])
        out[p + f"attn.proj.{kind}"] = parts[f"out.{kind}"]
        for name in ("norm1", "fc1", "fc2", "norm2"):
            out[p + f"{name}.{kind}"] = parts[f"{name}.{kind}"]
    return out


def to_hf_names(state: dict[str, torch.Tensor], names: dict[str, str], block_names: dict[str, str],
                block_prefix: str, depth: int) -> dict[str, torch.Tensor]:
    """An encoder state dict in an HF class's names: ``names`` maps the keys outside the blocks,
    ``block_names`` the q/k/v/out/norm1/fc1/fc2/norm2 tensors of block ``i`` under ``{block_prefix}{i}.``."""
    out = {theirs: state[ours] for ours, theirs in names.items() if ours in state}
    for i in range(depth):
        for key, t in block_tensors(state, i).items():
            part, kind = key.split(".")
            out[f"{block_prefix}{i}.{block_names[part]}.{kind}"] = t
    return out


def from_hf_names(sd: dict[str, torch.Tensor], names: dict[str, str], block_names: dict[str, str],
                  block_prefix: str, depth: int, folder: str) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_hf_names`; keys of ``names`` whose HF weight is absent are left out
    when optional (the mask embedding), else an error names the missing weight."""
    state: dict[str, torch.Tensor] = {}
    for ours, theirs in names.items():
        if theirs in sd:
            state[ours] = sd[theirs]
        elif not ours.endswith("mask_embedding"):
            raise ValueError(f"{folder}: missing weight {theirs}")
    for i in range(depth):
        state.update(fuse_block({f"{k}.{kind}": sd[f"{block_prefix}{i}.{v}.{kind}"]
                                 for k, v in block_names.items() for kind in ("weight", "bias")}, i))
    return state
