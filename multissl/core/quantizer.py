"""The BEST-RQ random-projection quantiser: frozen random projection + frozen random codebook -> labels.

BEST-RQ (Chiu et al. 2022, "Self-supervised learning with random-projection quantizer for speech
recognition", arXiv 2202.01855, section 2.1) labels each (normalised, stacked) speech feature frame ``x``
with ``argmin_i || normalize(c_i) - normalize(A x) ||``, where ``A`` is a random matrix with Xavier
initialisation and the ``c_i`` are standard normal vectors; neither is ever trained. With several
codebooks (the paper's multi-softmax variant) each has its own projection and codebook.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RandomProjectionQuantizer(nn.Module):
    """Frozen random-projection quantiser (Chiu et al. 2022, arXiv 2202.01855): ``(..., in_dim)`` features
    -> ``(..., codebooks)`` long codes in ``[0, codebook_size)``.

    ``projection`` (codebooks, in_dim, code_dim) is Xavier-normal (std ``sqrt(2 / (in_dim + code_dim))``),
    ``codebook`` (codebooks, codebook_size, code_dim) is standard normal then l2-normalised per vector. Both
    are drawn from a private ``torch.Generator`` seeded with ``seed`` (on the CPU, so the same seed gives the
    same quantiser on every machine, and the global RNG is left untouched) and are persistent buffers: they
    are in the state dict and checkpoints, are moved by ``.to(device)``, and are never seen by an optimiser.
    Keep them in float32 (``module.to(torch.bfloat16)`` would round them); ``forward`` computes in float32
    with autocast off.

    The code is the nearest codebook vector by cosine: the argmax of the dot product of the l2-normalised
    projection with the (normalised) codebook, which is the argmin of their l2 distance. A frame that
    projects to zero (e.g. all-zero padding) gets code 0.

    >>> q = RandomProjectionQuantizer(80, codebook_size=512, codebooks=2)
    >>> codes = q(torch.randn(4, 10, 80))
    >>> codes.shape, codes.dtype
    (torch.Size([4, 10, 2]), torch.int64)
    >>> x = torch.randn(3, 80)
    >>> bool(torch.equal(q(x), RandomProjectionQuantizer(80, codebook_size=512, codebooks=2)(x)))  # same seed
    True
    """

    projection: torch.Tensor
    codebook: torch.Tensor

    def __init__(
        self, in_dim: int, code_dim: int = 16, codebook_size: int = 8192, codebooks: int = 1, seed: int = 0
    ) -> None:
        super().__init__()
        if min(in_dim, code_dim, codebook_size, codebooks) < 1:
            raise ValueError("in_dim, code_dim, codebook_size and codebooks must all be >= 1")
        self.in_dim, self.code_dim, self.codebook_size, self.codebooks = in_dim, code_dim, codebook_size, codebooks
        self.seed = seed
        g = torch.Generator(device="cpu").manual_seed(seed)
        std = math.sqrt(2.0 / (in_dim + code_dim))  # Xavier (Glorot) normal, gain 1
        projection = torch.randn(codebooks, in_dim, code_dim, generator=g, dtype=torch.float32) * std
        codebook = torch.randn(codebooks, codebook_size, code_dim, generator=g, dtype=torch.float32)
        self.register_buffer("projection", projection, persistent=True)
        self.register_buffer("codebook", F.normalize(codebook, dim=-1), persistent=True)

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, code_dim={self.code_dim}, codebook_size={self.codebook_size}, "
            f"codebooks={self.codebooks}, seed={self.seed}"
        )

    @torch.no_grad()
    def forward(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Codes (..., codebooks) long for features ``x`` (..., in_dim); ``chunk`` rows are scored at a time
        to bound the (chunk, codebooks, codebook_size) score tensor."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"expected last dimension {self.in_dim}, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        with torch.autocast(device_type=x.device.type, enabled=False):
            flat = x.reshape(-1, self.in_dim).float()
            proj, book = self.projection.float(), self.codebook.float()
            out = []
            for rows in flat.split(chunk):
                z = F.normalize(torch.einsum("nd,cde->nce", rows, proj), dim=-1)  # (n, C, code_dim)
                out.append(torch.einsum("nce,cve->ncv", z, book).argmax(-1))  # (n, C)
            codes = torch.cat(out) if out else flat.new_zeros(0, self.codebooks, dtype=torch.long)
        return codes.reshape(*lead, self.codebooks)
