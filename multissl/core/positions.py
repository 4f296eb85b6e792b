"""Fixed 2-D sine-cosine positions for patch grids (data2vec 2.0 images, MAE)."""

from __future__ import annotations

import torch


def sincos_2d(height: int, width: int, dim: int, column_first: bool = False) -> torch.Tensor:
    """Fixed 2-D positions (height * width, dim), patches in raster order: the first half of each vector
    encodes the patch's row as [sin | cos] over ``dim // 4`` frequencies from 1 to 1/10000, the second
    half its column the same way (``column_first``: the column first, the layout of MAE's reference
    ``get_2d_sincos_pos_embed`` and of transformers' ``ViTMAEDecoder``); ``dim`` must be a multiple of 4.

    >>> sincos_2d(2, 3, 8).shape
    torch.Size([6, 8])
    """
    if dim % 4:
        raise ValueError(f"dim ({dim}) must be a multiple of 4 for sin-cos positions")
    freq = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                indexing="ij")
    parts = []
    for coord in ((cols, rows) if column_first else (rows, cols)):
        angle = coord.flatten()[:, None] * freq[None]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, 1).float()
