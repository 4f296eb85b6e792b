"""DINO's self-distillation loss between views and its teacher centre (Caron et al. 2021, "Emerging
Properties in Self-Supervised Vision Transformers", arXiv 2104.14294, section 3.1 and Algorithm 1).

The teacher's outputs are centred (a running mean is subtracted) and sharpened (a low temperature);
the student learns to match them from every other view. Centring alone would flatten the
distribution and sharpening alone would collapse it onto one dimension; together they avoid both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multissl.core.distributed import all_sum


def dino_teacher_probabilities(teacher_logits: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """The teacher's targets ``softmax((teacher_logits - center) / teacher_temp)`` over the last
    dimension, in float32 and without gradient. ``teacher_logits`` is (..., K), ``center`` (K,).

    >>> dino_teacher_probabilities(torch.zeros(1, 2, 4), torch.zeros(4), 0.04)[0, 0].tolist()
    [0.25, 0.25, 0.25, 0.25]
    """
    if center.shape != teacher_logits.shape[-1:]:
        raise ValueError(f"dino: center {tuple(center.shape)} does not match teacher logits "
                         f"{tuple(teacher_logits.shape)}")
    if teacher_temp <= 0:
        raise ValueError(f"dino: teacher_temp must be > 0, got {teacher_temp}")
    logits = teacher_logits.detach().float() - center.detach().float()
    return F.softmax(logits / teacher_temp, dim=-1)


def dino_cross_entropy(student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float) -> torch.Tensor:
    """The DINO loss from given teacher targets (from :func:`dino_teacher_probabilities`, or from
    Sinkhorn-Knopp as in DINOv2): ``-sum_k p_t[i] log softmax(s[j] / student_temp)`` for every pair of
    teacher view ``i`` (of ``teacher_probs``, (Vt, B, K)) and student view ``j`` (of ``student_logits``,
    (Vs, B, K)) with ``i != j``, averaged over the pairs and the B samples. The first Vt student views
    must be the teacher's views in the same order (the global crops); the rest are the local crops,
    which the teacher never sees. Computed in float32; returns a scalar.

    >>> student = torch.zeros(4, 2, 8)  # 2 global + 2 local crops of 2 images, 8 prototypes
    >>> round(dino_cross_entropy(student, torch.full((2, 2, 8), 1 / 8), 0.1).item(), 4)  # log 8
    2.0794
    """
    if student_logits.ndim != 3 or teacher_probs.ndim != 3 or student_logits.shape[1:] != teacher_probs.shape[1:]:
        raise ValueError(
            f"dino: expected student (Vs, B, K) and teacher (Vt, B, K), got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_probs.shape)}"
        )
    n_teacher, n_student = teacher_probs.shape[0], student_logits.shape[0]
    if n_student < n_teacher or n_student < 2:
        raise ValueError(f"dino: need at least 2 student views and no fewer than the teacher's {n_teacher}, "
                         f"got {n_student}")
    if student_temp <= 0:
        raise ValueError(f"dino: student_temp must be > 0, got {student_temp}")
    log_p = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    # ce[i, j]: cross-entropy of teacher view i against student view j, averaged over the samples
    with torch.autocast(device_type=log_p.device.type, enabled=False):  # float32 products even under autocast
        ce = -torch.einsum("ibk,jbk->ij", teacher_probs.float(), log_p) / student_logits.shape[1]
    other = ~torch.eye(n_teacher, n_student, dtype=torch.bool, device=ce.device)
    return ce[other].mean()


def dino_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """The DINO loss: :func:`dino_cross_entropy` of the student's views (Vs, B, K) against the
    teacher's centred and sharpened global views (Vt, B, K) with the centre ``center`` (K,). The
    defaults are the paper's (student 0.1; teacher 0.04, warmed up to 0.07 in its ViT runs).
    Gradient flows to the student only.

    >>> s, t = torch.randn(4, 3, 16), torch.randn(2, 3, 16)
    >>> dino_loss(s, t, torch.zeros(16)).shape
    torch.Size([])
    """
    return dino_cross_entropy(student_logits, dino_teacher_probabilities(teacher_logits, center, teacher_temp),
                              student_temp)


def dino_center_update(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """The new centre ``momentum * center + (1 - momentum) * mean(teacher_logits)``, the mean over all
    rows of ``teacher_logits`` (..., K) (every view and sample) of the GLOBAL batch: sums and row counts
    are added over ranks, so N ranks give what one rank gives with the whole batch. No gradient;
    returns a new (K,) tensor in ``center``'s dtype. The paper's momentum is 0.9.

    >>> dino_center_update(torch.zeros(2), torch.tensor([[[1.0, 3.0]], [[3.0, 5.0]]]), momentum=0.5).tolist()
    [1.0, 2.0]
    """
    if center.shape != teacher_logits.shape[-1:]:
        raise ValueError(f"dino: center {tuple(center.shape)} does not match teacher logits "
                         f"{tuple(teacher_logits.shape)}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"dino: center momentum must be in [0, 1], got {momentum}")
    rows = teacher_logits.detach().float().reshape(-1, center.shape[0])
    total = all_sum(torch.cat([rows.sum(0), rows.new_tensor([rows.shape[0]])]))  # one all-reduce for both
    batch_mean = total[:-1] / total[-1].clamp_min(1.0)
    return (momentum * center.detach().float() + (1.0 - momentum) * batch_mean).to(center.dtype)
