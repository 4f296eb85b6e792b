"""The masked autoencoder's pixel loss (He et al. 2022, "Masked Autoencoders Are Scalable Vision
Learners", arXiv 2111.06377, section 3 "MAE decoder" and "Reconstruction target"): images cut into
patches, the mean squared error between predicted and true pixels averaged over the masked patches
only, optionally on per-patch normalised pixels.

The patch layout is exactly ``ViTMAEForPreTraining.patchify`` (and the reference
``MaskedAutoencoderViT.patchify``): patches in raster order, each flattened as (row, column, channel).
"""

from __future__ import annotations

import torch

NORM_PIX_EPS = 1e-6
"""Added to the per-patch variance before the square root (the reference code and transformers)."""


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut images (N, C, H, W) into (N, L, patch * patch * C) patches, L = (H / patch) * (W / patch),
    in raster order; each patch is flattened as (row, column, channel), as in ViTMAE.

    >>> patchify(torch.zeros(2, 3, 32, 48), 16).shape
    torch.Size([2, 6, 768])
    >>> patchify(torch.arange(8.0).view(1, 2, 2, 2), 2).tolist()
    [[[0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]]]
    """
    if pixels.ndim != 4:
        raise ValueError(f"patchify: expected pixels (N, C, H, W), got shape {tuple(pixels.shape)}")
    n, c, h, w = pixels.shape
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"patchify: image size {h}x{w} is not a multiple of the patch size {patch}")
    x = pixels.reshape(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(n, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: (N, L, patch * patch * C) patches on a ``grid`` of
    (rows, columns) patches back to images (N, C, rows * patch, columns * patch).

    >>> x = torch.randn(2, 3, 8, 12)
    >>> torch.equal(unpatchify(patchify(x, 4), (2, 3), 4), x)
    True
    """
    n, length, size = patches.shape
    gh, gw = grid
    if length != gh * gw or size % (patch * patch):
        raise ValueError(f"unpatchify: patches {tuple(patches.shape)} do not fit a {gh}x{gw} grid of {patch}px patches")
    c = size // (patch * patch)
    x = patches.reshape(n, gh, gw, patch, patch, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(n, c, gh * patch, gw * patch)


def mae_loss(
    pred: torch.Tensor, target_patches: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """The MAE loss: per-patch mean squared error between ``pred`` and ``target_patches`` (both
    (N, L, P), e.g. from :func:`patchify`), averaged over the patches where ``mask`` (N, L; bool or
    0/1, True / 1 = masked) is set. With ``norm_pix`` each target patch is first normalised by its own
    mean and variance (unbiased, as ``Tensor.var`` in the reference and transformers) plus 1e-6, the
    paper's "normalized pixels" target (its Table 1c; transformers calls it ``norm_pix_loss``).

    Computed in at least float32. With no masked patch at all the loss is 0 (transformers: NaN).

    >>> target = torch.tensor([[[0.0, 2.0], [1.0, 1.0]]])
    >>> mae_loss(torch.zeros(1, 2, 2), target, torch.tensor([[True, False]]), norm_pix=False).item()
    2.0
    >>> round(mae_loss(torch.tensor([[[-1.0, 1.0]]]), torch.tensor([[[3.0, 5.0]]]), torch.ones(1, 1)).item(), 4)
    0.0858
    """
    if pred.shape != target_patches.shape or pred.ndim != 3 or mask.shape != pred.shape[:2]:
        raise ValueError(
            f"mae_loss: expected pred and target (N, L, P) and mask (N, L), got {tuple(pred.shape)}, "
            f"{tuple(target_patches.shape)} and {tuple(mask.shape)}"
        )
    dtype = torch.promote_types(pred.dtype, torch.float32)
    pred, target = pred.to(dtype), target_patches.to(dtype)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
    per_patch = (pred - target).pow(2).mean(dim=-1)
    mask = mask.to(dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
