"""The shared blocks' tensors under Hugging Face names: each adapter maps its encoder onto an HF class
with these, naming only what differs (the keys outside the blocks and the blocks' module names)."""

from __future__ import annotations

import numpy as np
import torch


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


def pool_states(hidden_states: tuple[torch.Tensor, ...], valid: torch.Tensor) -> np.ndarray:
    """An HF model's hidden states mean-pooled over the valid positions of each input: (B, layers, D)."""
    m = valid.unsqueeze(-1).to(hidden_states[0].dtype)
    return torch.stack([(h * m).sum(1) / m.sum(1).clamp_min(1) for h in hidden_states], 1).float().cpu().numpy()
