"""Contrastive losses (NT-Xent, SupCon, MoCo v3, NNCLR, PIRL) against independent naive implementations
of the papers' definitions, in float64 numpy with loops over anchors and pairs, on fixed small batches.
The 2-rank checks of the gathers are in test_losses_distributed.py."""

import numpy as np
import pytest
import torch

from multissl.core.losses.mocov3 import mocov3_loss
from multissl.core.losses.nnclr import nearest_neighbours, nnclr_loss, nnclr_queue_update
from multissl.core.losses.ntxent import ntxent_loss
from multissl.core.losses.pirl import pirl_loss, pirl_memory_update, pirl_normaliser
from multissl.core.losses.supcon import supcon_loss


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(unit(a) @ unit(b))


def naive_ntxent(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """SimCLR eq. 1: l(i, j) = -log exp(sim(i, j)/tau) / sum_{k != i} exp(sim(i, k)/tau), over all 2N anchors."""
    z = list(z1) + list(z2)
    n = len(z1)
    losses = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(np.exp(cos(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        losses.append(-np.log(np.exp(cos(z[i], z[j]) / tau) / denominator))
    return float(np.mean(losses))


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_ntxent_matches_simclr_eq_1(tau):
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 4), torch.randn(5, 4)
    got = ntxent_loss(z1, z2, temperature=tau)
    assert got.item() == pytest.approx(naive_ntxent(z1.double().numpy(), z2.double().numpy(), tau), rel=1e-5)
    # without a process group, gather is the same computation
    assert ntxent_loss(z1, z2, temperature=tau, gather=True).item() == pytest.approx(got.item(), rel=1e-6)


def test_ntxent_gradients_and_bad_input():
    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    ntxent_loss(z1, z2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0  # both views are anchors and candidates
    with pytest.raises(ValueError, match="ntxent: expected two views"):
        ntxent_loss(torch.randn(4, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="ntxent: temperature"):
        ntxent_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)


def naive_supcon(z: np.ndarray, labels: list[int], tau: float) -> float:
    """SupCon eq. 2 (L_out) over the anchors with at least one positive; z is (N, V, D)."""
    flat = [(unit(z[i, v]), labels[i]) for v in range(z.shape[1]) for i in range(z.shape[0])]
    losses = []
    for a, (za, la) in enumerate(flat):
        others = [k for k in range(len(flat)) if k != a]
        positives = [p for p in others if flat[p][1] == la]
        if not positives:
            continue  # a label seen once: no positive, left out of the mean
        denominator = sum(np.exp(za @ flat[k][0] / tau) for k in others)
        losses.append(-np.mean([np.log(np.exp(za @ flat[p][0] / tau) / denominator) for p in positives]))
    return float(np.mean(losses))


def test_supcon_matches_l_out_with_a_label_seen_once():
    torch.manual_seed(0)
    features = torch.randn(6, 2, 5)  # 6 examples x 2 views
    labels = torch.tensor([0, 1, 0, 2, 1, 0])  # label 2 appears once (its 2 views are each other's positive)
    got = supcon_loss(features, labels, temperature=0.1)
    assert got.item() == pytest.approx(naive_supcon(features.double().numpy(), labels.tolist(), 0.1), rel=1e-5)
    # one view: the example with label 2 has no positive at all; it is left out and nothing is NaN
    single = features[:, 0].clone().requires_grad_(True)
    loss = supcon_loss(single, labels, temperature=0.1)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(naive_supcon(single.detach().double().numpy()[:, None], labels.tolist(), 0.1),
                                        rel=1e-5)
    loss.backward()
    assert torch.isfinite(single.grad).all() and single.grad[3].abs().sum() > 0  # still a negative for others


def test_supcon_without_any_positive_is_zero_and_with_distinct_labels_is_ntxent():
    torch.manual_seed(0)
    features = torch.randn(4, 3, requires_grad=True)
    loss = supcon_loss(features, torch.arange(4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(features.grad).all()
    z1, z2 = torch.randn(5, 4), torch.randn(5, 4)
    as_supcon = supcon_loss(torch.stack([z1, z2], dim=1), torch.arange(5), temperature=0.3)
    assert as_supcon.item() == pytest.approx(ntxent_loss(z1, z2, temperature=0.3).item(), rel=1e-5)
    with pytest.raises(ValueError, match="supcon: expected"):
        supcon_loss(torch.randn(4, 2, 3), torch.arange(5))
    with pytest.raises(ValueError, match="supcon: need at least 2 embeddings"):
        supcon_loss(torch.randn(1, 3), torch.arange(1))


def test_mocov3_is_infonce_over_the_batch_keys_times_two_tau():
    torch.manual_seed(0)
    query, key = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    tau = 0.2
    got = mocov3_loss(query, key, temperature=tau)
    q, k = query.detach().double().numpy(), key.detach().double().numpy()
    expected = np.mean([-np.log(np.exp(cos(q[i], k[i]) / tau) / sum(np.exp(cos(q[i], k[j]) / tau) for j in range(5)))
                        for i in range(5)]) * 2 * tau
    assert got.item() == pytest.approx(expected, rel=1e-5)
    got.backward()
    assert query.grad.abs().sum() > 0 and key.grad is None  # keys come from the momentum encoder
    with pytest.raises(ValueError, match="mocov3"):
        mocov3_loss(query, key[:3])


def test_nnclr_uses_the_nearest_queue_entry_as_the_positive():
    torch.manual_seed(0)
    z, other, queue = torch.randn(4, 3), torch.randn(4, 3, requires_grad=True), torch.randn(10, 3)
    tau = 0.1
    got = nnclr_loss(z, other, queue, temperature=tau)
    zn, p, qn = z.double().numpy(), other.detach().double().numpy(), queue.double().numpy()
    losses = []
    for i in range(4):
        nn = unit(qn[max(range(10), key=lambda j: cos(zn[i], qn[j]))])  # NN(z_i, Q) by cosine
        logits = [nn @ unit(p[k]) / tau for k in range(4)]
        losses.append(-np.log(np.exp(logits[i]) / sum(np.exp(x) for x in logits)))
    assert got.item() == pytest.approx(np.mean(losses), rel=1e-5)
    # the neighbour really replaces z: the loss with z itself as anchor differs
    assert got.item() != pytest.approx(nnclr_loss(z, other, z, temperature=tau).item(), rel=1e-3)
    got.backward()
    assert other.grad.abs().sum() > 0
    # the neighbour is a queue entry: nothing flows back to z
    assert not nnclr_loss(z.clone().requires_grad_(True), other.detach(), queue).requires_grad
    assert nearest_neighbours(z, queue).requires_grad is False


def test_nnclr_queue_update_is_first_in_first_out_and_wraps():
    queue = torch.arange(10.0).reshape(5, 2)
    batch = torch.tensor([[-1.0, -1.0], [-2.0, -2.0], [-3.0, -3.0]], requires_grad=True)
    new, pointer = nnclr_queue_update(queue, 3, batch)
    expected = [list(r) for r in queue.tolist()]
    for n, row in enumerate(batch.tolist()):
        expected[(3 + n) % 5] = row
    assert new.tolist() == expected and pointer == 1
    assert queue.equal(torch.arange(10.0).reshape(5, 2)) and not new.requires_grad  # a new, detached queue
    with pytest.raises(ValueError, match="nnclr: queue pointer"):
        nnclr_queue_update(queue, 5, batch)
    with pytest.raises(ValueError, match="no longer than the queue"):
        nnclr_queue_update(queue, 0, torch.zeros(6, 2))


def naive_pirl(f, g, memory, indices, negatives, tau, lam, z: float = 1.0) -> float:
    """PIRL eq. 3-5 with the model probability exp(s/tau) / Z of Wu et al. 2018 (Z = 1: eq. 3 as written):
    h(a, b) = P / (P + N/|D|) with P = exp(s/tau) / Z, s the cosine similarity."""
    n_neg, size = len(negatives[0]), len(memory)

    def h(a, b):
        p = np.exp(cos(a, b) / tau) / z
        return p / (p + n_neg / size)

    def nce(m_i, x, negs):
        return -np.log(h(m_i, x)) - sum(np.log(1 - h(x, memory[j])) for j in negs)

    return float(np.mean([lam * nce(memory[indices[b]], g[b], negatives[b])
                          + (1 - lam) * nce(memory[indices[b]], f[b], negatives[b]) for b in range(len(f))]))


def test_pirl_matches_the_nce_loss_with_a_memory_bank():
    torch.manual_seed(0)
    f, g = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    memory = torch.randn(20, 4, requires_grad=True)
    indices, negatives = torch.tensor([2, 7, 11]), torch.randint(0, 20, (3, 6))
    got = pirl_loss(f, g, memory, indices, negatives, temperature=0.07, weight=0.5)
    expected = naive_pirl(f.detach().double().numpy(), g.detach().double().numpy(), memory.detach().double().numpy(),
                          indices.tolist(), negatives.tolist(), 0.07, 0.5)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    weighted = pirl_loss(f, g, memory, indices, negatives, temperature=0.2, weight=0.8)
    assert weighted.item() == pytest.approx(naive_pirl(
        f.detach().double().numpy(), g.detach().double().numpy(), memory.detach().double().numpy(),
        indices.tolist(), negatives.tolist(), 0.2, 0.8), rel=1e-5)
    got.backward()
    assert f.grad.abs().sum() > 0 and g.grad.abs().sum() > 0 and memory.grad is None
    with pytest.raises(ValueError, match="pirl: expected indices"):
        pirl_loss(f, g, memory, indices, negatives[0])


def test_pirl_with_the_partition_function_estimated_as_wu_et_al():
    torch.manual_seed(1)
    f, g, memory = torch.randn(3, 4), torch.randn(3, 4), torch.randn(20, 4)
    indices, negatives = torch.tensor([2, 7, 11]), torch.randint(0, 20, (3, 6))
    m, x = memory.double().numpy(), f.double().numpy()
    # Z = |D| * the mean of exp(s / tau) over every pair the batch scores: own row and negatives
    pairs = [np.exp(cos(x[b], m[j]) / 0.07) for b in range(3) for j in [indices[b].item(), *negatives[b].tolist()]]
    normaliser = pirl_normaliser(f, memory, indices, negatives, temperature=0.07)
    assert float(normaliser) == pytest.approx(np.mean(pairs), rel=1e-5)
    got = pirl_loss(f, g, memory, indices, negatives, temperature=0.07, weight=0.5, normaliser=float(normaliser))
    expected = naive_pirl(x, g.double().numpy(), m, indices.tolist(), negatives.tolist(), 0.07, 0.5,
                          z=len(memory) * np.mean(pairs))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() != pytest.approx(pirl_loss(f, g, memory, indices, negatives, 0.07, 0.5).item(), rel=1e-2)
    with pytest.raises(ValueError, match="normaliser >= 0"):
        pirl_loss(f, g, memory, indices, negatives, normaliser=-1.0)


def test_pirl_memory_update_is_a_normalised_moving_average():
    torch.manual_seed(0)
    memory = torch.nn.functional.normalize(torch.randn(6, 3), dim=-1)
    features, before = torch.randn(2, 3), memory.clone()
    new = pirl_memory_update(memory, torch.tensor([4, 1]), features, momentum=0.5)
    m, f = memory.double().numpy(), features.double().numpy()
    expected = m.copy()
    for b, i in enumerate([4, 1]):
        expected[i] = unit(0.5 * m[i] + 0.5 * unit(f[b]))
    assert np.allclose(new.double().numpy(), expected, atol=1e-6)
    assert memory.equal(before)  # a new bank; the old one is untouched
