"""The rest of the family (Barlow Twins, VICReg, SimSiam, SwAV, DeepCluster v2) against independent naive
implementations of the papers' definitions, in float64 numpy with loops, on fixed small batches; and every
loss that multiplies matrices keeps float32 under bf16 autocast."""

import numpy as np
import pytest
import torch

from multissl.core.losses.barlow_twins import barlow_twins_loss
from multissl.core.losses.deepcluster import deepcluster_loss
from multissl.core.losses.dino import dino_loss
from multissl.core.losses.koleo import koleo_loss
from multissl.core.losses.mocov3 import mocov3_loss
from multissl.core.losses.nnclr import nnclr_loss
from multissl.core.losses.ntxent import ntxent_loss
from multissl.core.losses.pirl import pirl_loss
from multissl.core.losses.simsiam import simsiam_loss
from multissl.core.losses.sinkhorn import sinkhorn_knopp
from multissl.core.losses.supcon import supcon_loss
from multissl.core.losses.swav import swav_codes, swav_loss
from multissl.core.losses.vicreg import vicreg_loss


def log_softmax(x: np.ndarray) -> np.ndarray:
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def naive_barlow_twins(z1: np.ndarray, z2: np.ndarray, lam: float, eps: float) -> float:
    b, d = z1.shape

    def standardise(z):
        out = np.empty_like(z)
        for j in range(d):
            mean = sum(z[:, j]) / b
            var = sum((z[:, j] - mean) ** 2) / b  # biased, as batch norm
            out[:, j] = (z[:, j] - mean) / np.sqrt(var + eps)
        return out

    a, c = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            cij = sum(a[n, i] * c[n, j] for n in range(b)) / b
            loss += (1 - cij) ** 2 if i == j else lam * cij ** 2
    return loss


def test_barlow_twins_matches_the_cross_correlation_definition():
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 5) * 2 + 1, torch.randn(8, 5)
    z2 = z2 + 0.8 * z1  # correlated views
    got = barlow_twins_loss(z1, z2, off_diagonal_weight=5e-3)
    assert got.item() == pytest.approx(naive_barlow_twins(z1.double().numpy(), z2.double().numpy(), 5e-3, 1e-5),
                                       rel=1e-5)
    assert barlow_twins_loss(z1, z2, off_diagonal_weight=0.5).item() == pytest.approx(
        naive_barlow_twins(z1.double().numpy(), z2.double().numpy(), 0.5, 1e-5), rel=1e-5)
    # identical views with uncorrelated features reach the minimum, 0 (up to eps)
    x = torch.randn(8, 4)
    centred = x - x.mean(0)
    white = torch.linalg.svd(centred, full_matrices=False)[0]  # centred, orthogonal columns
    assert barlow_twins_loss(white, white).item() < 1e-6
    with pytest.raises(ValueError, match="barlow_twins"):
        barlow_twins_loss(z1, z2[:, :4])


def naive_vicreg(z1, z2, lam, mu, nu, gamma, eps) -> float:
    b, d = z1.shape
    invariance = sum(((z1[i] - z2[i]) ** 2).sum() for i in range(b)) / (b * d)  # Algorithm 1's mse_loss

    def variance(z):
        return sum(max(0.0, gamma - np.sqrt(np.var(z[:, j], ddof=1) + eps)) for j in range(d)) / d

    def covariance(z):
        cov = np.cov(z, rowvar=False)  # (B - 1)-normalised
        return sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d

    return lam * invariance + mu * (variance(z1) + variance(z2)) + nu * (covariance(z1) + covariance(z2))


def test_vicreg_matches_the_three_terms():
    torch.manual_seed(0)
    z1 = torch.randn(10, 6) * torch.tensor([0.3, 2.0, 0.5, 1.5, 0.1, 1.0])  # some features below std 1
    z2 = z1 + 0.3 * torch.randn(10, 6)
    got = vicreg_loss(z1, z2)
    expected = naive_vicreg(z1.double().numpy(), z2.double().numpy(), 25, 25, 1, 1.0, 1e-4)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    other = vicreg_loss(z1, z2, invariance_weight=1.0, variance_weight=2.0, covariance_weight=3.0, gamma=0.5)
    assert other.item() == pytest.approx(naive_vicreg(z1.double().numpy(), z2.double().numpy(), 1, 2, 3, 0.5, 1e-4),
                                         rel=1e-5)
    assert vicreg_loss(z1, z2, gather=True).item() == pytest.approx(got.item(), rel=1e-6)  # one process
    with pytest.raises(ValueError, match="vicreg: the batch needs at least 2"):
        vicreg_loss(z1[:1], z2[:1])


def test_simsiam_is_negative_cosine_with_a_stop_gradient_on_the_projection():
    torch.manual_seed(0)
    prediction, projection = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    got = simsiam_loss(prediction, projection)
    p, z = prediction.detach().double().numpy(), projection.detach().double().numpy()
    expected = -np.mean([p[i] @ z[i] / np.linalg.norm(p[i]) / np.linalg.norm(z[i]) for i in range(6)])
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # the symmetric loss through a shared encoder: the stop-gradient really cuts the projection's branch
    encoder = torch.nn.Linear(4, 4)
    simsiam_loss(prediction, encoder(torch.randn(6, 4))).backward()
    assert encoder.weight.grad is None
    got.backward()
    assert prediction.grad.abs().sum() > 0 and projection.grad is None
    with pytest.raises(ValueError, match="simsiam"):
        simsiam_loss(prediction, projection[:, :3])


@pytest.mark.parametrize("v", [2, 4])  # 2 global crops (each predicts the other's codes); 2 global + 2 local
def test_swav_swapped_prediction_over_multi_crop(v):
    torch.manual_seed(0)
    b, k, tau = 5, 3, 0.1
    scores = torch.randn(v, b, k)
    codes = torch.stack([sinkhorn_knopp(scores[s]) for s in range(2)])
    got = swav_loss(scores, codes, temperature=tau)
    sc, q = scores.double().numpy(), codes.double().numpy()
    per_coded_view = []
    for s in range(2):  # the views with codes
        per_other = [np.mean([-(q[s, n] * log_softmax(sc[t, n] / tau)).sum() for n in range(b)])
                     for t in range(v) if t != s]
        per_coded_view.append(np.mean(per_other))
    assert got.item() == pytest.approx(np.mean(per_coded_view), rel=1e-5)
    x = scores.clone().requires_grad_(True)
    swav_loss(x, codes).backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="swav: expected scores"):
        swav_loss(scores, torch.stack([codes[0]] * (v + 1)))
    with pytest.raises(ValueError, match="swav: expected scores"):
        swav_loss(scores[:1], codes[:1])  # one view has no other view to predict


def test_swav_codes_balance_the_queue_and_the_batch_together():
    torch.manual_seed(0)
    scores, queue = torch.randn(4, 3), torch.randn(20, 3)
    codes = swav_codes(scores, epsilon=0.5, iterations=3, queue_scores=queue)
    assert codes.shape == (4, 3) and torch.allclose(codes.sum(1), torch.ones(4), atol=1e-5)
    alone = swav_codes(scores, epsilon=0.5, iterations=3)
    assert not torch.allclose(codes, alone, atol=1e-3)  # the queue changes the balancing
    everything = sinkhorn_knopp(torch.cat([queue, scores]), epsilon=0.5, iterations=3)
    assert torch.allclose(codes, everything[20:])


def test_deepcluster_v2_is_cross_entropy_against_kmeans_assignments():
    torch.manual_seed(0)
    v, b, k, tau = 3, 4, 5, 0.1
    scores = torch.randn(v, b, k)
    assignments = torch.tensor([2, -1, 0, 4])  # image 1 is not assigned yet
    got = deepcluster_loss(scores, assignments, temperature=tau)
    sc = scores.double().numpy()
    ces = [-log_softmax(sc[c, n] / tau)[assignments[n]] for c in range(v) for n in range(b) if assignments[n] >= 0]
    assert len(ces) == 9
    assert got.item() == pytest.approx(np.mean(ces), rel=1e-5)
    assert deepcluster_loss(scores, torch.full((b,), -1)).item() == 0.0
    with pytest.raises(ValueError, match="deepcluster"):
        deepcluster_loss(scores, assignments[:3])


def test_losses_compute_their_products_in_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    codes = torch.rand(2, 16, 32, generator=g)
    views, negatives = torch.randn(4, 16, 32, generator=g), torch.randint(0, 16, (16, 5), generator=g)
    losses = {
        "dino": lambda: dino_loss(views, views[:2], torch.zeros(32)),
        "koleo": lambda: koleo_loss(z1),
        "ntxent": lambda: ntxent_loss(z1, z2),
        "supcon": lambda: supcon_loss(torch.stack([z1, z2], 1), torch.arange(16) % 3),
        "mocov3": lambda: mocov3_loss(z1, z2),
        "nnclr": lambda: nnclr_loss(z1, z2, views[2]),
        "pirl": lambda: pirl_loss(z1, z2, views[3], torch.arange(16), negatives),
        "barlow_twins": lambda: barlow_twins_loss(z1, z2),
        "vicreg": lambda: vicreg_loss(z1, z2),
        "swav": lambda: swav_loss(views, codes / codes.sum(-1, keepdim=True)),
    }
    for name, loss in losses.items():
        plain = loss()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under = loss()
        assert under.dtype == torch.float32 and torch.allclose(under, plain, rtol=1e-5), name
