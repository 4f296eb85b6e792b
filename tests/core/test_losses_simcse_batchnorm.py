"""The SimCSE loss against a naive float64 implementation of the paper's equations (Gao et al. 2021, eq. 1
unsupervised, eq. 5 with hard negatives), and on 2 gloo ranks holding a split batch against 1 process
holding it all (loss and gradients), together with the global-batch batch norm of the contrastive
projectors (outputs, gradients and running statistics those of one process's BatchNorm1d)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from multissl.core.batchnorm import GlobalBatchNorm1d, global_batch_norm
from multissl.core.losses.simcse import simcse_loss


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def naive_simcse(h: np.ndarray, h_pos: np.ndarray, h_neg: np.ndarray | None, tau: float) -> float:
    """-log e^{sim(h_i, h_i+)/t} / sum_j (e^{sim(h_i, h_j+)/t} [+ e^{sim(h_i, h_j-)/t}]), averaged over i."""
    n = len(h)
    losses = []
    for i in range(n):
        denominator = sum(np.exp(cos(h[i], h_pos[j]) / tau) for j in range(n))
        if h_neg is not None:
            denominator += sum(np.exp(cos(h[i], h_neg[j, k]) / tau) for j in range(n) for k in range(h_neg.shape[1]))
        losses.append(-np.log(np.exp(cos(h[i], h_pos[i]) / tau) / denominator))
    return float(np.mean(losses))


@pytest.mark.parametrize("negatives", [0, 1, 2])
def test_simcse_matches_the_papers_equations(negatives):
    g = torch.Generator().manual_seed(negatives)
    a, p = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    neg = torch.randn(6, negatives, 5, generator=g) if negatives else None
    got = simcse_loss(a, p, neg, temperature=0.05)
    want = naive_simcse(a.double().numpy(), p.double().numpy(), None if neg is None else neg.double().numpy(), 0.05)
    assert got.item() == pytest.approx(want, rel=1e-5)
    if negatives == 1:  # one hard negative per example may come as (N, D)
        assert simcse_loss(a, p, neg[:, 0], temperature=0.05).item() == pytest.approx(got.item(), rel=1e-6)
    assert simcse_loss(a, p, neg, temperature=0.05, gather=True).item() == pytest.approx(got.item(), rel=1e-6)


def test_simcse_is_one_sided_unlike_ntxent_and_rejects_bad_input():
    from multissl.core.losses.ntxent import ntxent_loss

    g = torch.Generator().manual_seed(3)
    a, p = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    assert simcse_loss(a, p).item() != pytest.approx(simcse_loss(p, a).item(), rel=1e-3)  # anchors are view 0 only
    assert simcse_loss(a, p, temperature=0.5).item() != pytest.approx(ntxent_loss(a, p, 0.5).item(), rel=1e-3)
    with pytest.raises(ValueError, match="simcse: expected anchors and positives"):
        simcse_loss(a, p[:3])
    with pytest.raises(ValueError, match="simcse: expected hard negatives"):
        simcse_loss(a, p, torch.randn(3, 3))
    with pytest.raises(ValueError, match="simcse: temperature"):
        simcse_loss(a, p, temperature=0.0)


def test_global_batch_norm_is_batch_norm_in_one_process():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    mlp[1].weight.data.uniform_(0.5, 1.5)
    x = torch.randn(10, 4)
    want = mlp(x)
    converted = global_batch_norm(mlp)
    assert isinstance(converted[1], GlobalBatchNorm1d) and converted[1].weight.data.min() >= 0.5
    assert torch.allclose(converted(x), want, atol=1e-6)


WORLD = 2
SPLIT = [slice(0, 3), slice(3, 8)]  # uneven: the gathers pad


def make_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"a": torch.randn(8, 5, generator=g), "p": torch.randn(8, 5, generator=g),
            "neg": torch.randn(8, 2, 5, generator=g), "x": torch.randn(8, 4, generator=g) * 3 + 1,
            "up": torch.randn(8, 4, generator=g)}


def compute(x: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    """SimCSE loss and gradients, and a batch norm's output, gradients and running statistics, on ``rows``."""
    leaves = [x[k][rows].clone().requires_grad_(True) for k in ("a", "p", "neg")]
    loss = simcse_loss(*leaves, temperature=0.1, gather=True)
    loss.backward()
    torch.manual_seed(0)
    bn = GlobalBatchNorm1d(4)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    xs = x["x"][rows].clone().requires_grad_(True)
    out = bn(xs)
    # a loss of the global mean over rows (as DDP averages what global_mean normalises)
    from multissl.core.distributed import global_mean

    global_mean((out * x["up"][rows]).sum(), out.shape[0]).backward()
    return {"loss": loss.detach(), "grad_a": leaves[0].grad, "grad_p": leaves[1].grad, "grad_neg": leaves[2].grad,
            "bn_out": out.detach(), "bn_grad_x": xs.grad, "bn_grad_w": bn.weight.grad, "bn_grad_b": bn.bias.grad,
            "running_mean": bn.running_mean, "running_var": bn.running_var}


def _rank(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    torch.save(compute(make_inputs(), SPLIT[rank]), f"{out}.rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_with_a_split_batch_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_rank, args=(str(tmp_path / "store"), str(tmp_path / "out")), nprocs=WORLD,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"out.rank{r}.pt") for r in range(WORLD)]
    single = compute(make_inputs(), slice(None))
    assert torch.allclose(sum(r["loss"] for r in ranks) / WORLD, single["loss"], rtol=1e-5)
    for key in ("grad_a", "grad_p", "grad_neg", "bn_grad_x"):  # each rank gets world_size x its rows' gradient
        assert torch.allclose(torch.cat([r[key] for r in ranks]) / WORLD, single[key], rtol=1e-4, atol=1e-6), key
    assert torch.allclose(torch.cat([r["bn_out"] for r in ranks]), single["bn_out"], atol=1e-5)
    for key in ("bn_grad_w", "bn_grad_b"):  # DDP averages parameter gradients over ranks
        assert torch.allclose(sum(r[key] for r in ranks) / WORLD, single[key], rtol=1e-4, atol=1e-6), key
    for key in ("running_mean", "running_var"):  # the same on every rank: the global batch's
        for r in ranks:
            assert torch.allclose(r[key], single[key], atol=1e-6), key
    # the reductions ran: rank 0 alone would normalise by its own 3 rows
    alone = compute(make_inputs(), SPLIT[0])
    assert not torch.allclose(alone["bn_out"], ranks[0]["bn_out"], atol=1e-3)
    reference = nn.BatchNorm1d(4)  # and one process's GlobalBatchNorm1d is torch's BatchNorm1d
    torch.manual_seed(0)
    nn.init.uniform_(reference.weight, 0.5, 1.5)
    nn.init.uniform_(reference.bias, -0.5, 0.5)
    assert torch.allclose(reference(make_inputs()["x"]), single["bn_out"], atol=1e-5)
    assert torch.allclose(reference.running_var, single["running_var"], atol=1e-6)
