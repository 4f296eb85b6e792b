"""Self-distillation losses (DINO, iBOT, KoLeo, Sinkhorn-Knopp, BYOL, I-JEPA) against independent naive
implementations of the papers' definitions, in float64 numpy with loops, on fixed small batches."""

import math

import numpy as np
import pytest
import torch

from multissl.core.losses.byol import byol_loss
from multissl.core.losses.dino import dino_center_update, dino_cross_entropy, dino_loss
from multissl.core.losses.ibot import ibot_center_update, ibot_patch_loss
from multissl.core.losses.ijepa import ijepa_loss
from multissl.core.losses.koleo import koleo_loss
from multissl.core.losses.sinkhorn import sinkhorn_knopp


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def log_softmax(x: np.ndarray) -> np.ndarray:
    return np.log(softmax(x))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


@pytest.mark.parametrize(("student_temp", "teacher_temp"), [(0.1, 0.04), (0.1, 0.07), (0.5, 0.2)])
def test_dino_loss_is_the_cross_view_cross_entropy_of_centred_sharpened_teacher(student_temp, teacher_temp):
    torch.manual_seed(0)
    student, teacher, center = torch.randn(4, 3, 6) * 2, torch.randn(2, 3, 6) * 2, torch.randn(6)
    got = dino_loss(student, teacher, center, student_temp=student_temp, teacher_temp=teacher_temp)
    s, t, c = student.double().numpy(), teacher.double().numpy(), center.double().numpy()
    pair_losses = []
    for i in range(2):  # teacher views (global crops)
        for j in range(4):  # student views: the same 2 global crops, then 2 local crops
            if i == j:
                continue
            per_sample = [-(softmax((t[i, b] - c) / teacher_temp) * log_softmax(s[j, b] / student_temp)).sum()
                          for b in range(3)]
            pair_losses.append(np.mean(per_sample))
    assert len(pair_losses) == 6
    assert got.item() == pytest.approx(np.mean(pair_losses), rel=1e-5)


def test_dino_loss_gradient_reaches_the_student_only_and_bad_shapes_are_refused():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 2, 5, requires_grad=True), torch.randn(2, 2, 5, requires_grad=True)
    center = torch.zeros(5, requires_grad=True)
    dino_loss(student, teacher, center).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None and center.grad is None
    with pytest.raises(ValueError, match="dino: center"):
        dino_loss(student, teacher, torch.zeros(4))
    with pytest.raises(ValueError, match="dino: expected student"):
        dino_cross_entropy(torch.zeros(3, 2, 5), torch.zeros(2, 3, 5), 0.1)


def test_dino_center_update_is_an_ema_of_the_teachers_batch_mean():
    torch.manual_seed(0)
    center, teacher = torch.randn(6), torch.randn(2, 5, 6)
    got = dino_center_update(center, teacher, momentum=0.9)
    rows = teacher.double().numpy().reshape(-1, 6)
    mean = np.array([sum(r[k] for r in rows) / len(rows) for k in range(6)])
    assert np.allclose(got.double().numpy(), 0.9 * center.double().numpy() + 0.1 * mean, atol=1e-6)
    assert not center.equal(got)  # a new tensor; the old centre is untouched
    # the centring changes the teacher's targets: the same loss with the new centre differs
    student = torch.randn(2, 5, 6)
    assert dino_loss(student, teacher, got).item() != pytest.approx(dino_loss(student, teacher, center).item())


def test_ibot_patch_loss_averages_masked_patches_per_image_then_images():
    torch.manual_seed(0)
    b, n, k = 4, 5, 7
    student, teacher, center = torch.randn(b, n, k) * 2, torch.randn(b, n, k) * 2, torch.randn(k)
    masks = torch.tensor([[1, 0, 0, 0, 0],  # one masked patch
                          [1, 1, 1, 1, 1],  # all masked
                          [0, 0, 0, 0, 0],  # none: adds 0, still counts as an image
                          [0, 1, 0, 1, 0]], dtype=torch.bool)
    got = ibot_patch_loss(student, teacher, masks, center, student_temp=0.1, teacher_temp=0.07)
    s, t, c, m = student.double().numpy(), teacher.double().numpy(), center.double().numpy(), masks.numpy()
    per_image, every_patch = [], []
    for i in range(b):
        ces = [-(softmax((t[i, p] - c) / 0.07) * log_softmax(s[i, p] / 0.1)).sum() for p in range(n) if m[i, p]]
        per_image.append(np.mean(ces) if ces else 0.0)
        every_patch += ces
    assert got.item() == pytest.approx(np.mean(per_image), rel=1e-5)
    assert got.item() != pytest.approx(np.mean(every_patch), rel=1e-2)  # not the flat mean over patches


def test_ibot_center_update_uses_every_patch_and_gradients_reach_the_student_only():
    torch.manual_seed(0)
    center, teacher = torch.randn(3), torch.randn(2, 4, 3)
    rows = teacher.double().numpy().reshape(-1, 3)
    expected = 0.8 * center.double().numpy() + 0.2 * rows.mean(0)
    assert np.allclose(ibot_center_update(center, teacher, momentum=0.8).numpy(), expected, atol=1e-6)
    student = torch.randn(2, 4, 3, requires_grad=True)
    teacher.requires_grad_(True)
    ibot_patch_loss(student, teacher, torch.ones(2, 4, dtype=torch.bool), center).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
    with pytest.raises(ValueError, match="ibot: expected"):
        ibot_patch_loss(student, teacher, torch.ones(2, 3, dtype=torch.bool), center)


def test_koleo_is_minus_mean_log_nearest_neighbour_distance_of_normalised_features():
    torch.manual_seed(0)
    features = torch.randn(7, 4) * 3
    got = koleo_loss(features, eps=1e-8)
    f = [unit(r) for r in features.double().numpy()]
    expected = -np.mean([np.log(min(np.linalg.norm(f[i] - f[j]) for j in range(7) if j != i) + 1e-8)
                         for i in range(7)])
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # spreading the features apart lowers the loss: the gradient points that way
    x = features.clone().requires_grad_(True)
    koleo_loss(x).backward()
    assert koleo_loss(features - 0.05 * x.grad).item() < got.item()
    # a duplicated feature gives a large but finite loss and a finite gradient
    dup = torch.cat([features[:1], features]).requires_grad_(True)
    loss = koleo_loss(dup)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(dup.grad).all()
    with pytest.raises(ValueError, match="koleo"):
        koleo_loss(torch.randn(1, 4))


def naive_sinkhorn(scores: np.ndarray, epsilon: float, iterations: int) -> np.ndarray:
    """SwAV's Algorithm: Q = exp(S / eps)^T (K x B), then scale rows to 1/K and columns to 1/B in turn."""
    k, b = scores.shape[1], scores.shape[0]
    q = np.exp(scores / epsilon).T
    q = q / q.sum()
    for _ in range(iterations):
        for r in range(k):
            q[r] = q[r] / q[r].sum() / k
        for col in range(b):
            q[:, col] = q[:, col] / q[:, col].sum() / b
    return (q * b).T


def test_sinkhorn_knopp_matches_the_algorithm_and_balances_the_prototypes():
    torch.manual_seed(0)
    scores = torch.nn.functional.normalize(torch.randn(12, 8), dim=-1) @ \
        torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).T  # cosine scores of 12 samples to 4 prototypes
    got = sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    assert np.allclose(got.double().numpy(), naive_sinkhorn(scores.double().numpy(), 0.05, 3), atol=1e-5)
    assert torch.allclose(got.sum(1), torch.ones(12), atol=1e-5)  # each sample's row sums to 1
    converged = sinkhorn_knopp(scores, epsilon=0.05, iterations=300)
    assert torch.allclose(converged.sum(1), torch.ones(12), atol=1e-5)
    assert torch.allclose(converged.sum(0), torch.full((4,), 12 / 4), atol=1e-3)  # each prototype holds B/K
    # adding a constant changes nothing (up to float32 rounding of the sum), and where exp(scores /
    # epsilon) overflows float32 (and float64) the result is still finite and the same
    assert torch.allclose(sinkhorn_knopp(scores + 30.0, 0.05, 3), got, rtol=1e-3, atol=1e-6)
    assert ((scores * 3 + 50.0) / 0.05).max().item() > math.log(np.finfo(np.float64).max)
    big = sinkhorn_knopp(scores * 3 + 50.0, epsilon=0.05, iterations=3)
    assert torch.isfinite(big).all()
    assert torch.allclose(big, sinkhorn_knopp(scores * 3, 0.05, 3), rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="sinkhorn_knopp"):
        sinkhorn_knopp(scores[0])


def test_byol_loss_is_the_mse_of_normalised_vectors_and_the_target_gets_no_gradient():
    torch.manual_seed(0)
    prediction, target = torch.randn(5, 6, requires_grad=True), torch.randn(5, 6, requires_grad=True)
    got = byol_loss(prediction, target)
    p, z = prediction.detach().double().numpy(), target.detach().double().numpy()
    expected = np.mean([((unit(p[i]) - unit(z[i])) ** 2).sum() for i in range(5)])  # the paper's eq. 2
    assert got.item() == pytest.approx(expected, rel=1e-5)
    got.backward()
    assert prediction.grad.abs().sum() > 0
    assert target.grad is None  # the target network's output is a constant
    with pytest.raises(ValueError, match="byol"):
        byol_loss(prediction, target[:4])


def naive_layer_norm(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return (x - x.mean()) / np.sqrt(((x - x.mean()) ** 2).mean() + eps)


def test_ijepa_loss_against_layer_normalised_detached_targets():
    torch.manual_seed(0)
    prediction = torch.randn(2, 5, 8, requires_grad=True)  # 2 images x 5 target-block patches
    target_hidden = (torch.randn(2, 5, 8) * 4 + 1).requires_grad_(True)
    p = prediction.detach().double().numpy().reshape(-1, 8)
    t = np.stack([naive_layer_norm(r) for r in target_hidden.detach().double().numpy().reshape(-1, 8)])
    diff = p - t
    smooth = np.where(np.abs(diff) < 1, 0.5 * diff ** 2, np.abs(diff) - 0.5)
    assert ijepa_loss(prediction, target_hidden).item() == pytest.approx(smooth.mean(), rel=1e-5)
    l2 = np.mean([(d ** 2).sum() for d in diff])
    loss = ijepa_loss(prediction, target_hidden, kind="l2")
    assert loss.item() == pytest.approx(l2, rel=1e-5)
    loss.backward()
    assert prediction.grad.abs().sum() > 0 and target_hidden.grad is None
    with pytest.raises(ValueError, match="ijepa: kind"):
        ijepa_loss(prediction, target_hidden, kind="l1")
