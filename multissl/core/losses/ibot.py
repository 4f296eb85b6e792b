"""iBOT's masked patch loss (Zhou et al. 2021, "iBOT: Image BERT Pre-Training with Online Tokenizer",
arXiv 2111.07832, section 3.2 and its released code): the student sees a global view with some patches
masked and predicts, at each masked patch, the teacher's centred and sharpened distribution over patch
prototypes for the same view unmasked. The teacher is the online tokenizer; its patch centre is kept
apart from DINO's [CLS] centre.

Averaging. The paper writes the loss as a sum over masked patches; the released code (and DINOv2's)
averages over the masked patches of each image, then over the images, so an image with many masked
patches weighs no more than one with few. That is what this does. An image with no masked patch adds 0
and still counts in the mean over images, as in both codes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multissl.core.losses.dino import dino_center_update, dino_teacher_probabilities


def ibot_patch_cross_entropy(
    student_patch_logits: torch.Tensor, teacher_patch_probs: torch.Tensor, masks: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """The iBOT patch loss from given teacher targets: at each patch where ``masks`` (B, N) is set, the
    cross-entropy ``-sum_k p_t log softmax(s / student_temp)`` between ``teacher_patch_probs`` and
    ``student_patch_logits`` (both (B, N, K)), averaged over that image's masked patches, then over the B
    images. B may hold several global views of each image (views folded into the batch): the mean over
    views of per-view means is the mean over all of them. Computed in float32; returns a scalar.

    >>> student, teacher = torch.zeros(2, 3, 4), torch.full((2, 3, 4), 0.25)
    >>> masks = torch.tensor([[True, False, True], [False, False, False]])
    >>> round(ibot_patch_cross_entropy(student, teacher, masks, 0.1).item(), 4)  # (log 4 + 0) / 2
    0.6931
    """
    if student_patch_logits.ndim != 3 or teacher_patch_probs.shape != student_patch_logits.shape \
            or masks.shape != student_patch_logits.shape[:2]:
        raise ValueError(
            f"ibot: expected student and teacher patches (B, N, K) and masks (B, N), got "
            f"{tuple(student_patch_logits.shape)}, {tuple(teacher_patch_probs.shape)} and {tuple(masks.shape)}"
        )
    if student_temp <= 0:
        raise ValueError(f"ibot: student_temp must be > 0, got {student_temp}")
    masks = masks.bool()
    # only the masked patches: (M, K) rows, and each row's weight 1 / (masked patches of its image)
    log_p = F.log_softmax(student_patch_logits[masks].float() / student_temp, dim=-1)
    ce = -(teacher_patch_probs[masks].float() * log_p).sum(-1)
    per_image = masks.sum(-1, keepdim=True).clamp_min(1).float().expand_as(masks)[masks]
    return (ce / per_image).sum() / masks.shape[0]


def ibot_patch_loss(
    student_patch_logits: torch.Tensor,
    teacher_patch_logits: torch.Tensor,
    masks: torch.Tensor,
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.07,
) -> torch.Tensor:
    """The iBOT masked patch loss: :func:`ibot_patch_cross_entropy` of the student's patch logits of
    the masked views (B, N, K) against the teacher's patch logits of the same views unmasked (B, N, K),
    centred by the patch centre ``center`` (K,) and sharpened by ``teacher_temp``. Defaults are the
    paper's (student 0.1, teacher patch temperature 0.07 after warm-up from 0.04). Gradient flows to the
    student only.

    >>> s, t = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    >>> ibot_patch_loss(s, t, torch.rand(2, 6) < 0.5, torch.zeros(16)).shape
    torch.Size([])
    """
    probs = dino_teacher_probabilities(teacher_patch_logits, center, teacher_temp)
    return ibot_patch_cross_entropy(student_patch_logits, probs, masks, student_temp)


def ibot_center_update(center: torch.Tensor, teacher_patch_logits: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """The new patch centre: an EMA (``momentum``, 0.9 in the paper) of the mean of the teacher's
    patch logits (B, N, K) over every patch of every image of the GLOBAL batch (masked or not, as in
    iBOT's code), kept apart from DINO's [CLS] centre. No gradient; returns a new (K,) tensor.

    >>> ibot_center_update(torch.zeros(2), torch.tensor([[[1.0, 3.0], [3.0, 5.0]]]), momentum=0.5).tolist()
    [1.0, 2.0]
    """
    if teacher_patch_logits.ndim != 3:
        raise ValueError(f"ibot: expected teacher patch logits (B, N, K), got {tuple(teacher_patch_logits.shape)}")
    return dino_center_update(center, teacher_patch_logits, momentum)
