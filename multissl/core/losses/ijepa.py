"""I-JEPA's loss (Assran et al. 2023, "Self-Supervised Learning from Images with a Joint-Embedding
Predictive Architecture", arXiv 2301.08243, section 3): the predictor, given the context block and the
positions of a target block, predicts the target encoder's representations of that block's patches.
The targets are the EMA target encoder's outputs, layer-normalised over features (no affine) and
treated as constants.

The paper writes the loss as the squared L2 distance averaged over target patches; the released code
trains with PyTorch's smooth-L1 (beta 1) averaged over every patch and feature, and its reported
results come from that. The default here is the code's smooth-L1; ``kind="l2"`` gives the paper's form.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def ijepa_loss(
    prediction: torch.Tensor, target_hidden: torch.Tensor, kind: Literal["smooth_l1", "l2"] = "smooth_l1"
) -> torch.Tensor:
    """The loss between ``prediction`` (..., D), the predictor's outputs at the target blocks' patches,
    and ``target_hidden`` (..., D), the target encoder's outputs at the same patches (in the same order),
    which are detached and layer-normalised here. ``kind`` ``"smooth_l1"`` (default): smooth-L1 with beta
    1 averaged over patches and features (the released code); ``"l2"``: the squared L2 distance summed
    over features and averaged over patches (the paper's equation). Computed in float32; a scalar.

    >>> target = torch.tensor([[1.0, -1.0], [3.0, 5.0]])  # layer-normalised: [[1, -1], [-1, 1]]
    >>> round(ijepa_loss(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), target).item(), 6)
    0.0
    >>> round(ijepa_loss(torch.zeros(2, 2), target, kind="l2").item(), 4)  # each patch 1 + 1
    2.0
    """
    if prediction.shape != target_hidden.shape or prediction.ndim < 2:
        raise ValueError(f"ijepa: expected prediction and target of the same shape (..., D), got "
                         f"{tuple(prediction.shape)} and {tuple(target_hidden.shape)}")
    target = F.layer_norm(target_hidden.detach().float(), (target_hidden.shape[-1],))
    prediction = prediction.float()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(prediction, target, beta=1.0)
    if kind == "l2":
        return (prediction - target).pow(2).sum(-1).mean()
    raise ValueError(f"ijepa: kind must be 'smooth_l1' or 'l2', got {kind!r}")
