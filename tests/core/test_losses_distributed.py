"""The losses that reduce over the global batch, on 2 gloo ranks that each hold a slice of one batch,
against 1 process holding the whole batch: NT-Xent and SupCon with their autograd-aware gather (the
same loss and the same gradients; and NT-Xent's gradients come out different with a gather that drops
them), DINO's centre update, Sinkhorn-Knopp, Barlow Twins, VICReg with gather and MoCo v3.

Gradients: every rank's loss also depends on the other ranks' embeddings, and the gathers send those
gradients back, so a rank's embeddings receive world_size times the gradient of the global-batch loss;
DDP's average over ranks then gives exactly that gradient. So each rank's gradient / 2 is compared with
the single process's gradient of the same rows, and the mean of the ranks' losses with its loss.
"""

from unittest import mock

import torch
import torch.distributed as dist

import multissl.core.losses.ntxent as ntxent_module
from multissl.core.distributed import all_gather_rows, rows_before
from multissl.core.losses.barlow_twins import barlow_twins_loss
from multissl.core.losses.dino import dino_center_update
from multissl.core.losses.mocov3 import mocov3_loss
from multissl.core.losses.ntxent import ntxent_loss
from multissl.core.losses.sinkhorn import sinkhorn_knopp
from multissl.core.losses.supcon import supcon_loss
from multissl.core.losses.vicreg import vicreg_loss

WORLD = 2
UNEVEN = [slice(0, 3), slice(3, 8)]  # ranks may hold different numbers of rows: the gathers pad
EVEN = [slice(0, 4), slice(4, 8)]  # for the losses that average per rank (as DDP's batches are)
WHOLE = slice(None)


def make_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"z1": torch.randn(8, 6, generator=g), "z2": torch.randn(8, 6, generator=g),
            "features": torch.randn(8, 2, 6, generator=g), "labels": torch.tensor([0, 1, 0, 2, 1, 0, 3, 1]),
            "teacher": torch.randn(2, 8, 5, generator=g), "center": torch.randn(5, generator=g),
            "scores": torch.randn(8, 5, generator=g)}


def with_grad(loss_fn, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    loss = loss_fn(*leaves)
    loss.backward()
    return (loss.detach(), *[leaf.grad for leaf in leaves])


def compute(x: dict[str, torch.Tensor], uneven: slice, even: slice) -> dict[str, tuple[torch.Tensor, ...]]:
    """Everything that is compared, on this process's rows (all of them without a process group)."""
    return {
        "ntxent": with_grad(lambda a, b: ntxent_loss(a, b, temperature=0.5, gather=True), x["z1"][uneven],
                            x["z2"][uneven]),
        "supcon": with_grad(lambda f: supcon_loss(f, x["labels"][uneven], temperature=0.5, gather=True),
                            x["features"][uneven]),
        "barlow": with_grad(lambda a, b: barlow_twins_loss(a, b, off_diagonal_weight=0.1), x["z1"][uneven],
                            x["z2"][uneven]),
        "vicreg": with_grad(lambda a, b: vicreg_loss(a, b, gather=True), x["z1"][even], x["z2"][even]),
        "mocov3": with_grad(lambda q: mocov3_loss(q, x["z2"][even]), x["z1"][even]),
        "center": (dino_center_update(x["center"], x["teacher"][:, uneven], momentum=0.7),),
        "sinkhorn": (sinkhorn_knopp(x["scores"][uneven], epsilon=0.5, iterations=3),),
    }


def gather_dropping_gradients(x: torch.Tensor) -> torch.Tensor:
    """The usual mistake: a plain all_gather, with this rank's own rows put back so that they keep
    their gradient; the other ranks' rows are constants, so their gradient never goes back."""
    everyone = all_gather_rows(x)
    start = rows_before(x.shape[0])
    return torch.cat([everyone[:start], x, everyone[start + x.shape[0]:]])


def _rank(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    x = make_inputs()
    results = compute(x, UNEVEN[rank], EVEN[rank])
    with mock.patch.object(ntxent_module, "all_gather_with_grad", gather_dropping_gradients):
        results["ntxent_dropped"] = with_grad(lambda a, b: ntxent_loss(a, b, temperature=0.5, gather=True),
                                              x["z1"][UNEVEN[rank]], x["z2"][UNEVEN[rank]])
    torch.save(results, f"{out}.rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_with_a_split_batch_match_one_process_with_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_rank, args=(str(tmp_path / "store"), str(tmp_path / "out")), nprocs=WORLD,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"out.rank{r}.pt") for r in range(WORLD)]
    single = compute(make_inputs(), WHOLE, WHOLE)

    def mean_loss(name):
        return sum(r[name][0] for r in ranks) / WORLD

    def joined_grads(name, k):
        return torch.cat([r[name][k] for r in ranks]) / WORLD

    for name in ("ntxent", "supcon", "barlow", "vicreg", "mocov3"):
        assert torch.allclose(mean_loss(name), single[name][0], rtol=1e-5, atol=1e-6), name
        for k in range(1, len(single[name])):
            assert torch.allclose(joined_grads(name, k), single[name][k], rtol=1e-4, atol=1e-6), (name, k)
    # the gathers and the global sums really ran: a rank alone would compute something else
    alone = compute(make_inputs(), UNEVEN[0], EVEN[0])
    assert not torch.allclose(alone["ntxent"][0], ranks[0]["ntxent"][0], rtol=1e-3)
    assert not torch.allclose(alone["barlow"][0], ranks[0]["barlow"][0], rtol=1e-3)

    # a gather that drops gradients gives the same loss but not the global batch's gradients
    assert torch.allclose(mean_loss("ntxent_dropped"), single["ntxent"][0], rtol=1e-5)
    for k in (1, 2):
        assert not torch.allclose(joined_grads("ntxent_dropped", k), single["ntxent"][k], rtol=1e-2, atol=1e-4)

    # DINO's centre is the same on every rank and equal to the whole batch's; so are the Sinkhorn rows
    for r in ranks:
        assert torch.allclose(r["center"][0], single["center"][0], atol=1e-6)
    assert not torch.allclose(alone["center"][0], single["center"][0], atol=1e-3)
    assert torch.allclose(torch.cat([r["sinkhorn"][0] for r in ranks]), single["sinkhorn"][0], atol=1e-6)
    assert not torch.allclose(alone["sinkhorn"][0], single["sinkhorn"][0][UNEVEN[0]], atol=1e-3)
