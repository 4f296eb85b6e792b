"""The rest of the self-supervised family (Barlow Twins, VICReg, SimSiam, MoCo v3, SwAV, NNCLR, DeepCluster
v2, PIRL): each method's loss on real views equals a computation by hand from its pieces (the encoder's
pooled outputs, its heads, and the loss functions, whose own tests check them against the papers), so
that what is checked here is the wiring: which view meets which, what each head sees, where the
stop-gradients and the momentum encoder are, what the queues and banks hold before and after a step.
Views a method cannot use are one-line errors; every tiny recipe runs on real images (and the two-view
ones on real speech) and exports the standard Hugging Face class."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from multissl.core.adapter import PARTS
from multissl.core.blocks import EncoderConfig
from multissl.core.heads import MLPConfig
from multissl.core.losses.barlow_twins import barlow_twins_loss
from multissl.core.losses.deepcluster import deepcluster_loss
from multissl.core.losses.mocov3 import mocov3_loss
from multissl.core.losses.nnclr import nnclr_loss
from multissl.core.losses.pirl import pirl_loss, pirl_memory_update, pirl_normaliser
from multissl.core.losses.simsiam import simsiam_loss
from multissl.core.losses.swav import swav_codes, swav_loss
from multissl.core.losses.vicreg import vicreg_loss
from multissl.data.views import ViewCollator
from multissl.methods import METHODS
from multissl.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig
from multissl.methods.deepcluster import DeepClusterConfig, DeepClusterV2, spherical_kmeans
from multissl.methods.mocov3 import MoCoV3, MoCoV3Config
from multissl.methods.nnclr import NNCLR, NNCLRConfig
from multissl.methods.pirl import PIRL, PIRLConfig
from multissl.methods.simsiam import SimSiam, SimSiamConfig
from multissl.methods.swav import SwAV, SwAVConfig
from multissl.methods.vicreg import VICReg, VICRegConfig
from multissl.modalities.audio.model import Audio, AudioConfig
from multissl.modalities.vision import Vision
from multissl.modalities.vision.data import Picture
from multissl.modalities.vision.model import VisionConfig
from multissl.modalities.vision.views import ImageViews, VisionViews
from multissl.recipe import RecipeError, load_recipe
from tests.conftest import ROOT, TINY_AUDIO, TINY_VISION, for_method

ENC = EncoderConfig(dim=32, depth=2, heads=4, ffn_dim=64, norm="pre", eps=1e-6, dropout=0.0, attention_dropout=0.0,
                    activation_dropout=0.0)
HEAD = MLPConfig(layers=2, hidden_dim=24, out_dim=16)
FAMILY = ("barlow_twins", "vicreg", "simsiam", "mocov3", "nnclr", "swav", "deepcluster", "pirl")
TWO_VIEW = ("barlow_twins", "vicreg", "simsiam", "mocov3")


def _vision() -> Vision:
    return Vision(VisionConfig(image_size=16, patch_size=4, mask_embedding=False))


def _model(cls, cfg, run_steps: int = 10):
    torch.manual_seed(0)
    model = cls(_vision(), ENC, cfg, run_steps)
    model.train()
    return model


def _batch(image_dirs, n: int = 6, first: int = 0, local_crops: int = 0) -> dict:
    """Views of ``n`` real digit images (example ids ``first`` ...): two global views of 16 px and
    ``local_crops`` of 8 px."""
    paths = sorted(image_dirs[0].glob("*.png"))[first:first + n]
    maker = ImageViews(VisionViews(local_crops=local_crops, local_size=8), _vision().cfg)
    return ViewCollator(maker)([{"image": Picture(str(p)).open(), "seed": (0, 0, first + i)}
                                for i, p in enumerate(paths)])


def _pooled(encoder, view: dict, how: str) -> torch.Tensor:
    """The CLS token or the mean of the patches (images have no padding), by hand."""
    x, _ = encoder.encode(view)
    return x[:, 0] if how == "cls" else x[:, 1:].mean(1)


def _close(a: torch.Tensor | float, b: torch.Tensor | float, tol: float = 1e-5) -> bool:
    a, b = (float(x.detach()) if isinstance(x, torch.Tensor) else float(x) for x in (a, b))
    return abs(a - b) <= tol * max(1.0, abs(b))


def _unit_scale(head: torch.nn.Module) -> None:
    """Linear weights of standard deviation 1/sqrt(fan in), so that the head's outputs are of unit scale and
    every term of a loss counts (at the 0.02 of BERT's init the variance hinge would drown the rest)."""
    torch.manual_seed(1)
    for m in head.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=m.in_features ** -0.5)


# --- the two-view methods --------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("method", ["barlow_twins", "vicreg"])
def test_barlow_twins_and_vicreg_compare_the_two_views_projected_one_at_a_time(method, pool, image_dirs):
    if method == "barlow_twins":
        model = _model(BarlowTwins, BarlowTwinsConfig(pool=pool, projector=HEAD, off_diagonal_weight=0.05))

        def loss(a, b):
            return barlow_twins_loss(a, b, 0.05)
    else:
        model = _model(VICReg, VICRegConfig(pool=pool, projector=HEAD, invariance_weight=3.0, variance_weight=2.0,
                                            covariance_weight=0.5, gamma=0.8))

        def loss(a, b):
            return vicreg_loss(a, b, 3.0, 2.0, 0.5, 0.8)
    _unit_scale(model.projector)
    batch = _batch(image_dirs)
    with torch.no_grad():
        out = model(**batch)
        h = [_pooled(model.encoder, v, pool) for v in batch["views"]]
        z = [model.projector(x) for x in h]  # batch norm over each view's rows
        by_hand = loss(z[0], z[1])
        joint = model.projector(torch.cat(h)).chunk(2)  # batch norm over both views at once: another loss
        shifted = loss(z[0], z[1].roll(1, dims=0))  # each sample paired with another's view: another loss
    assert _close(out["loss"], by_hand), (float(out["loss"]), float(by_hand))
    assert not _close(loss(*joint), by_hand, 1e-4) and not _close(shifted, by_hand, 1e-4)
    cos = F.cosine_similarity(z[0], z[1]).mean()
    assert _close(out["view_cos"], cos) and 1 <= float(out["student_rank"]) <= 6


def test_simsiam_stops_the_gradient_at_the_projection_it_regresses(image_dirs):
    model = _model(SimSiam, SimSiamConfig(projector=MLPConfig(layers=3, hidden_dim=24, out_dim=16, last_norm=True),
                                          predictor=MLPConfig(layers=2, hidden_dim=8, out_dim=16)))
    batch = _batch(image_dirs)
    params = [p for p in model.encoder.parameters() if p.requires_grad]

    def grads(compute) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        value = compute()
        value.backward()
        return float(value.detach()), [p.grad.clone() for p in params]

    def by_hand(stop: bool) -> torch.Tensor:
        h = [_pooled(model.encoder, v, "cls") for v in batch["views"]]
        z = [model.projector(x) for x in h]
        p = [model.predictor(x) for x in z]
        target = [x.detach() if stop else x for x in z]  # the naive negative cosine, with or without the stop

        def d(a, b):
            return -F.cosine_similarity(a, b).mean()
        return d(p[0], target[1]) / 2 + d(p[1], target[0]) / 2

    out = model(**batch)
    model_loss, model_grads = grads(lambda: model(**batch)["loss"])
    hand_loss, hand_grads = grads(lambda: by_hand(stop=True))
    _, free_grads = grads(lambda: by_hand(stop=False))
    assert _close(out["loss"], hand_loss) and _close(model_loss, hand_loss)
    # the model encodes both views in one call, the hand one at a time: float32 rounding apart
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(model_grads, hand_grads, strict=True))
    assert not all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(model_grads, free_grads, strict=True))
    assert _close(hand_loss, float(simsiam_loss(*_pair_p_z(model, batch))), 1e-5)
    assert {"loss", "target_var", "pred_var", "student_rank", "view_cos"} == set(out)


def _pair_p_z(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(p1 and p2, z2 and z1) stacked, so that one ``simsiam_loss`` gives the symmetric mean."""
    with torch.no_grad():
        z = [model.projector(_pooled(model.encoder, v, "cls")) for v in batch["views"]]
        p = [model.predictor(x) for x in z]
    return torch.cat([p[0], p[1]]), torch.cat([z[1], z[0]])


def test_mocov3_queries_meet_the_momentum_encoders_keys_of_the_other_view(image_dirs):
    cfg = MoCoV3Config(projector=MLPConfig(layers=3, hidden_dim=24, out_dim=16, last_norm=True),
                       predictor=MLPConfig(layers=2, hidden_dim=24, out_dim=16, last_norm=True), temperature=0.3)
    model = _model(MoCoV3, cfg, run_steps=10)
    assert set(model.teacher) == {*PARTS, "projector"}  # the whole encoder and the projector, not the predictor
    with torch.no_grad():  # a momentum encoder that differs from the online one
        for p in model.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.teacher["projector"]:  # and whose running statistics would differ from the batch's
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.fill_(3.0)
    batch = _batch(image_dirs)
    with torch.no_grad():
        out = model(**batch)
        q = [model.predictor(model.projector(_pooled(model.encoder, v, "cls"))) for v in batch["views"]]
        teacher = model.teacher_encoder()
        projector = copy.deepcopy(model.teacher["projector"]).train()  # training mode: the batch's statistics
        k = [projector(_pooled(teacher, v, "cls")) for v in batch["views"]]
        by_hand = mocov3_loss(q[0], k[1], 0.3) + mocov3_loss(q[1], k[0], 0.3)
        same_view = mocov3_loss(q[0], k[0], 0.3) + mocov3_loss(q[1], k[1], 0.3)
    assert _close(out["loss"], by_hand) and not _close(same_view, by_hand, 1e-3)
    assert float(model.teacher["projector"][1].running_mean.mean()) == 3.0  # the forward left it alone


def test_mocov3_momentum_follows_the_cosine_from_0_99_and_the_frozen_patch_projection_stays(image_dirs):
    run_steps = 8
    cfg = MoCoV3Config(projector=MLPConfig(layers=3, hidden_dim=24, out_dim=16, last_norm=True),
                       predictor=MLPConfig(layers=2, hidden_dim=24, out_dim=16, last_norm=True), freeze_local=True)
    model = _model(MoCoV3, cfg, run_steps=run_steps)
    local = {k: v.clone() for k, v in model.encoder.local.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = _batch(image_dirs)
    for step in range(2):
        before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
        model(**batch)["loss"].backward()
        assert all(p.grad is None for p in model.teacher.parameters())
        assert all(p.grad is None for p in model.encoder.local.parameters())
        optimizer.step()
        optimizer.zero_grad()
        model.ema_step()
        tau = 1 - (1 - 0.99) * (math.cos(math.pi * step / run_steps) + 1) / 2
        students = {**{f"{p}.{k}": v for p in PARTS for k, v in getattr(model.encoder, p).state_dict().items()},
                    **{f"projector.{k}": v for k, v in model.projector.state_dict().items()}}
        for key, new in model.teacher.state_dict().items():
            if new.is_floating_point() and "running_" not in key:
                torch.testing.assert_close(new, tau * before[key] + (1 - tau) * students[key], rtol=0, atol=1e-6)
    assert all(torch.equal(local[k], v) for k, v in model.encoder.local.state_dict().items())


# --- SwAV -----------------------------------------------------------------------------------------


def _swav(queue_length: int = 0, freeze: int = 0) -> SwAV:
    return _model(SwAV, SwAVConfig(projector=HEAD, prototypes=5, temperature=0.2, epsilon=0.3, sinkhorn_iterations=4,
                                   freeze_prototypes=freeze, queue_length=queue_length))


def _swav_scores(model: SwAV, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores (V, B, K), the embeddings (V, B, P), the unit prototypes), by hand: every crop through the
    projector together, embeddings and prototypes normalised."""
    h = [_pooled(model.encoder, v, "cls") for v in batch["views"]]
    z = F.normalize(model.projector(torch.cat(h)), dim=-1).view(len(h), len(h[0]), -1)
    w = F.normalize(model.prototypes.weight, dim=-1)
    return z @ w.t(), z, w


@pytest.mark.parametrize("local_crops", [0, 2])  # 0: the paper's setting without multi-crop
def test_swav_swaps_sinkhorn_codes_of_the_global_views_over_every_crop(local_crops, image_dirs):
    model = _swav(freeze=1)
    with torch.no_grad():
        model.prototypes.weight.mul_(torch.rand(5, 1) * 3 + 0.5)  # prototypes off the unit sphere
        raw = model.prototypes.weight.clone()
    batch = _batch(image_dirs, local_crops=local_crops)
    assert len(batch["views"]) == 2 + local_crops and batch["global_views"] == 2
    out = model(**batch)
    assert torch.allclose(model.prototypes.weight, F.normalize(raw, dim=-1), atol=1e-6)  # normalised first
    with torch.no_grad():
        scores, _, _ = _swav_scores(model, batch)
        codes = torch.stack([swav_codes(scores[v], 0.3, 4) for v in range(2)])
        by_hand = swav_loss(scores, codes, 0.2)
        unswapped = sum(-(codes[v] * F.log_softmax(scores[v] / 0.2, dim=-1)).sum(-1).mean() for v in range(2)) / 2
    assert _close(out["loss"], by_hand) and not _close(unswapped, by_hand, 1e-3)
    out["loss"].backward()  # the first step: the prototypes are frozen (a zero gradient), the rest learns
    assert model.prototypes.weight.grad is not None and float(model.prototypes.weight.grad.abs().max()) == 0.0
    assert float(model.projector[0].weight.grad.abs().max()) > 0
    model.zero_grad()
    model(**batch)["loss"].backward()  # the second: they learn
    assert float(model.prototypes.weight.grad.abs().max()) > 0


def test_swav_queue_joins_sinkhorn_once_full_and_takes_the_global_views_embeddings(image_dirs):
    model = _swav(queue_length=9)
    batch = _batch(image_dirs, local_crops=2)  # 6 images
    with torch.no_grad():
        out = model(**batch)  # the queue is empty: not used; 6 rows of each global view pushed
        _, z, _ = _swav_scores(model, batch)
    assert float(out["queue_used"]) == 0.0 and int(model.queue_rows) == 6 and int(model.queue_pointer) == 6
    assert torch.allclose(model.queue[:, :6], z[:2], atol=1e-5) and float(model.queue[:, 6:].abs().max()) == 0

    with torch.no_grad():  # a full queue of known rows
        model.queue.copy_(F.normalize(torch.randn(2, 9, 16), dim=-1))
        model.queue_rows.fill_(9)
        queue = model.queue.clone()
        out = model(**batch)
        scores, z, w = _swav_scores(model, batch)
        codes = torch.stack([swav_codes(scores[v], 0.3, 4, queue[v] @ w.t()) for v in range(2)])
        without = torch.stack([swav_codes(scores[v], 0.3, 4) for v in range(2)])
    assert float(out["queue_used"]) == 1.0
    assert _close(out["loss"], swav_loss(scores, codes, 0.2))
    assert not _close(swav_loss(scores, without, 0.2), swav_loss(scores, codes, 0.2), 1e-4)
    # first in, first out: rows 6, 7, 8, 0, 1, 2 now hold this batch, rows 3 to 5 the old queue's
    rows = [6, 7, 8, 0, 1, 2]
    assert torch.allclose(model.queue[:, rows], z[:2], atol=1e-5) and torch.equal(model.queue[:, 3:6], queue[:, 3:6])
    assert int(model.queue_pointer) == 3


# --- NNCLR ----------------------------------------------------------------------------------------


def test_nnclr_positive_is_the_nearest_neighbour_in_the_queue_before_the_push(image_dirs):
    model = _model(NNCLR, NNCLRConfig(projector=MLPConfig(layers=3, hidden_dim=24, out_dim=16, last_norm=True),
                                      predictor=HEAD, temperature=0.2, queue_length=10))
    batch = _batch(image_dirs)

    def heads() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        z = [model.projector(_pooled(model.encoder, v, "cls")) for v in batch["views"]]
        return [F.normalize(x, dim=-1) for x in z], [model.predictor(x) for x in z]

    with torch.no_grad():  # an empty queue: the batch's first views are the support set
        out = model(**batch)
        z, p = heads()
        by_hand = nnclr_loss(z[0], p[1], z[0], 0.2) + nnclr_loss(z[1], p[0], z[0], 0.2)
    assert _close(out["loss"], by_hand)
    assert int(model.queue_rows) == 6 and torch.allclose(model.queue[:6], z[0], atol=1e-5)

    with torch.no_grad():  # a full queue of known rows
        model.queue.copy_(F.normalize(torch.randn(10, 16), dim=-1))
        model.queue_rows.fill_(10)
        model.queue_pointer.fill_(7)
        queue = model.queue.clone()
        out = model(**batch)
        z, p = heads()
        by_hand = nnclr_loss(z[0], p[1], queue, 0.2) + nnclr_loss(z[1], p[0], queue, 0.2)
        after_push = nnclr_loss(z[0], p[1], model.queue, 0.2) + nnclr_loss(z[1], p[0], model.queue, 0.2)
        swapped = nnclr_loss(z[0], p[0], queue, 0.2) + nnclr_loss(z[1], p[1], queue, 0.2)
    assert _close(out["loss"], by_hand) and not _close(after_push, by_hand, 1e-3)
    assert not _close(swapped, by_hand, 1e-3)
    rows = [7, 8, 9, 0, 1, 2]
    assert torch.allclose(model.queue[rows], z[0], atol=1e-5) and torch.equal(model.queue[3:7], queue[3:7])
    assert int(model.queue_pointer) == 3


def test_nnclr_loss_reaches_the_predictions_only(image_dirs):
    model = _model(NNCLR, NNCLRConfig(projector=HEAD, predictor=HEAD, queue_length=10))
    model(**_batch(image_dirs))["loss"].backward()
    assert all(p.grad is not None and float(p.grad.abs().max()) > 0 for p in model.predictor.parameters())
    assert float(model.projector[0].weight.grad.abs().max()) > 0  # through the predictions


# --- DeepCluster v2 -------------------------------------------------------------------------------


def _kmeans_by_hand(x: np.ndarray, start: list[int], iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means with loops: assign each row to the most similar centroid, move each centroid to
    the normalised sum of its rows (a centroid without rows stays), then assign once more."""
    centroids = x[start].copy()

    def assign() -> np.ndarray:
        return np.array([int(np.argmax([row @ c for c in centroids])) for row in x])

    for _ in range(iterations):
        labels = assign()
        for j in range(len(centroids)):
            members = x[labels == j]
            if len(members):
                total = members.sum(0)
                centroids[j] = total / np.linalg.norm(total)
    return centroids, assign()


def test_spherical_kmeans_matches_the_loop_definition():
    x = F.normalize(torch.randn(40, 5, generator=torch.Generator().manual_seed(3)), dim=1)
    centroids, labels = spherical_kmeans(x, 6, 7, torch.Generator().manual_seed(11))
    start = torch.randperm(40, generator=torch.Generator().manual_seed(11))[:6].tolist()  # the documented start
    c_hand, l_hand = _kmeans_by_hand(x.double().numpy(), start, 7)
    assert labels.tolist() == l_hand.tolist()
    assert np.allclose(centroids.numpy(), c_hand, atol=1e-5)
    assert np.allclose(np.linalg.norm(centroids.numpy(), axis=1), 1, atol=1e-6)


def test_deepcluster_classifies_every_crop_into_its_samples_cluster_of_the_bank(image_dirs):
    cfg = DeepClusterConfig(projector=HEAD, prototypes=3, temperature=0.3, bank_size=12, cluster_every=5,
                            kmeans_iterations=4)
    model = _model(DeepClusterV2, cfg)
    first = _batch(image_dirs, first=0, local_crops=1)  # examples 0 to 5
    with torch.no_grad():
        out = model(**first)  # nothing banked yet: no k-means, no assignment, a zero loss
    assert float(out["loss"]) == 0.0 and float(out["assigned"]) == 0.0 and int(model.kmeans_runs) == 0
    assert model.bank_ids[:6].tolist() == list(range(6)) and int(model.bank_rows) == 6
    bank = model.bank[:6].clone()

    second = _batch(image_dirs, first=3, local_crops=1)  # examples 3 to 8: 3, 4, 5 are banked
    with torch.no_grad():
        out = model(**second)  # 6 rows >= 3 prototypes and no k-means yet: it runs now, at batch 1
        centroids, clusters = spherical_kmeans(bank, 3, 4, torch.Generator().manual_seed(1))
        cluster_of = dict(zip(range(6), clusters.tolist(), strict=True))
        assigned = torch.tensor([cluster_of.get(i, -1) for i in range(3, 9)])
        h = [_pooled(model.encoder, v, "cls") for v in second["views"]]
        z = F.normalize(model.projector(torch.cat(h)), dim=-1).view(3, 6, -1)
        by_hand = deepcluster_loss(z @ centroids.t(), assigned, 0.3)
    assert torch.allclose(model.centroids, centroids, atol=1e-6) and int(model.kmeans_runs) == 1
    assert _close(out["loss"], by_hand) and float(out["assigned"]) == 0.5
    assert model.assignments(torch.tensor([5, 0, 8, 100])).tolist() == [cluster_of[5], cluster_of[0], -1, -1]
    assert model.bank_ids.tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8]  # the bank: first views of both batches
    assert torch.allclose(model.bank[6:], z[0], atol=1e-5)

    with torch.no_grad():  # batches 2, 3, 4: no k-means; batch 5 (a multiple of cluster_every): k-means
        for _ in range(3):
            model(**second)
        assert int(model.kmeans_runs) == 1
        model(**second)
    assert int(model.kmeans_runs) == 2 and int(model.batches_seen) == 6


# --- PIRL -----------------------------------------------------------------------------------------


def test_pirl_pulls_the_image_and_its_jigsaw_to_the_bank_entry_against_bank_negatives(image_dirs):
    cfg = PIRLConfig(dim=8, tiles=2, tile_size=4, memory_size=32, negatives=5, temperature=0.2, weight=0.3,
                     memory_momentum=0.6)
    model = _model(PIRL, cfg)
    batch = _batch(image_dirs)  # ids 0 to 5; 16 px views: cells of 8 px, tiles of 4
    memory = model.memory.clone()
    with torch.no_grad():
        out = model(**batch)
        order, offsets, drawn = model.draws(0, 0, 6, 6, 6, 8, torch.device("cpu"))  # the first batch's draws
    assert all(sorted(row) == [0, 1, 2, 3] for row in order.tolist())
    assert int(offsets.min()) >= 0 and int(offsets.max()) <= 4
    ids = torch.arange(6)
    negatives = drawn + (drawn >= ids[:, None]).long()
    assert bool((negatives != ids[:, None]).all()) and int(negatives.max()) < 6  # other samples' rows only

    images = batch["views"][1]["pixel_values"]
    with torch.no_grad():
        f = model.image_head(_pooled(model.encoder, batch["views"][0], "cls"))
        g = []
        for b in range(6):  # each tile cut by slicing and encoded on its own
            features = []
            for k in range(4):
                i, j = divmod(int(order[b, k]), 2)
                top, left = 8 * i + int(offsets[b, k, 0]), 8 * j + int(offsets[b, k, 1])
                tile = images[b:b + 1, :, top:top + 4, left:left + 4]
                features.append(model.tile_head(_pooled(model.encoder, {"pixel_values": tile}, "cls")))
            g.append(model.jigsaw_head(torch.cat(features, dim=1)))
        g = torch.cat(g)
        # Z / |D| estimated on this first training batch, from the bank before its update, then kept
        z = float(pirl_normaliser(f, memory, ids, negatives, 0.2))
        by_hand = pirl_loss(f, g, memory[:6], ids, negatives, 0.2, 0.3, normaliser=z)
        in_order = model.jigsaw_head(torch.cat([model.tile_head(_pooled(model.encoder, {"pixel_values": images[
            :, :, 8 * (k // 2):8 * (k // 2) + 4, 8 * (k % 2):8 * (k % 2) + 4]}, "cls")) for k in range(4)], dim=1))
    assert float(model.normaliser) == pytest.approx(z, rel=1e-5) and z > 0
    assert _close(out["loss"], by_hand) and not _close(pirl_loss(f, in_order, memory[:6], ids, negatives, 0.2, 0.3,
                                                                 normaliser=z), by_hand, 1e-4)
    assert not _close(out["loss"], pirl_loss(f, g, memory[:6], ids, negatives, 0.2, 0.3), 1e-3)  # Z = 1 differs
    assert torch.allclose(model.memory, pirl_memory_update(memory, ids, f, 0.6), atol=1e-5)
    assert int(model.memory_rows) == 6 and int(model.batches_seen) == 1
    with torch.no_grad():
        second = model(**_batch(image_dirs))
    assert float(model.normaliser) == pytest.approx(z, rel=1e-5) and float(second["normaliser"]) == float(
        model.normaliser)  # estimated once

    printed = _model(PIRL, PIRLConfig(dim=8, tiles=2, tile_size=4, memory_size=32, negatives=5, temperature=0.2,
                                      weight=0.3, estimate_partition=False))
    with torch.no_grad():
        out = printed(**batch)
    assert float(printed.normaliser) == 0 and _close(out["loss"], pirl_loss(f, g, memory[:6], ids, negatives, 0.2, 0.3))


def test_pirl_needs_a_patch_grid_and_ids_inside_the_bank(image_dirs):
    with pytest.raises(ValueError, match="jigsaw tiles: this modality has no patch grid"):
        PIRL(Audio(AudioConfig()), ENC, PIRLConfig())
    model = _model(PIRL, PIRLConfig(dim=8, tiles=2, tile_size=4, memory_size=4, negatives=3))
    with pytest.raises(ValueError, match=r"method.memory_size \(4\) must exceed every example id \(got 5\)"):
        model(**_batch(image_dirs))


# --- recipes --------------------------------------------------------------------------------------


def _recipe(method: str, modality: str = "vision"):
    return ROOT / "recipes" / modality / f"{method}-tiny.yaml"


def test_views_and_heads_the_family_cannot_use_are_one_line_errors():
    cases = [("barlow_twins", "vision", ["--views.local_crops", "2"], "views.local_crops must be 0 for method "
              "barlow_twins"),
             ("swav", "vision", ["--views.global_crops", "3"], "views.global_crops must be 2 for method swav"),
             ("deepcluster", "vision", ["--views.global_crops", "1"], "views.global_crops must be 2 for method"),
             ("vicreg", "audio", ["--views.crops", "3"], "views.crops must be 2 for method vicreg"),
             ("simsiam", "vision", ["--method.predictor.out_dim", "64"], "method.predictor.out_dim (64) must equal"),
             ("mocov3", "audio", ["--method.temperature", "0"], "method.temperature must be > 0"),
             ("deepcluster", "vision", ["--method.bank_size", "50"], "method.bank_size (50) must be >= "
              "method.prototypes"),
             ("pirl", "vision", ["--method.weight", "2"], "method.weight must lie in [0, 1]"),
             ("nnclr", "vision", ["--method.pool", "max"], "method.pool: 'max' is not one of")]
    for method, modality, overrides, message in cases:
        with pytest.raises(RecipeError) as e:
            load_recipe(_recipe(method, modality), overrides)
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    # a partial section keeps the method's paper values, not the generic ones
    cfg = load_recipe(None, ["--modality", "vision", "--method.name", "mocov3", "--method.ema.decay", "0.95"]).method
    assert (cfg.ema.end_decay, cfg.ema.shape, cfg.projector.hidden_dim, cfg.temperature) == (1.0, "cosine", 4096, 0.2)
    assert set(FAMILY) <= set(METHODS)


SMALL = {  # heads and state small enough for tiny test runs of each recipe
    "barlow_twins": ["--method.projector.hidden_dim", "32", "--method.projector.out_dim", "32"],
    "vicreg": ["--method.projector.hidden_dim", "32", "--method.projector.out_dim", "32"],
    "simsiam": ["--method.projector.hidden_dim", "32", "--method.projector.out_dim", "32",
                "--method.predictor.hidden_dim", "8", "--method.predictor.out_dim", "32"],
    "mocov3": ["--method.projector.hidden_dim", "32", "--method.projector.out_dim", "16",
               "--method.predictor.hidden_dim", "32", "--method.predictor.out_dim", "16"],
    "nnclr": ["--method.projector.hidden_dim", "32", "--method.projector.out_dim", "16",
              "--method.predictor.hidden_dim", "32", "--method.predictor.out_dim", "16", "--method.queue_length", "16"],
    "swav": ["--method.projector.hidden_dim", "32", "--method.projector.out_dim", "16", "--method.prototypes", "6",
             "--method.queue_length", "16", "--method.queue_start", "0", "--method.freeze_prototypes", "1",
             "--views.local_size", "8"],
    "deepcluster": ["--method.projector.hidden_dim", "32", "--method.projector.out_dim", "16",
                    "--method.prototypes", "4", "--method.bank_size", "16", "--method.cluster_every", "2",
                    "--views.local_size", "8"],
    "pirl": ["--method.tile_size", "4", "--method.negatives", "16"],
}


@pytest.mark.parametrize("method", FAMILY)
def test_tiny_vision_recipe_trains_on_real_images_and_exports_vit(method, tmp_path, image_dirs):
    from transformers import AutoModel

    from multissl.export.hf import export
    from multissl.train import pretrain

    recipe = _recipe(method)
    assert re.match(r"# An? ", recipe.read_text())  # a comment block that says what the recipe is
    args = [*for_method(TINY_VISION, recipe), *SMALL[method], "--health.min_rank", "0", "--data", str(image_dirs[0]),
            "--max_steps", "2", "--save_steps", "2", "--output_dir", str(tmp_path / "run")]
    run = pretrain(load_recipe(recipe, args))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(r["loss"]) for r in rows)
    out = export(run, tmp_path / "export")
    assert type(AutoModel.from_pretrained(out)).__name__ == "ViTModel"
    assert METHODS[method].card_title(load_recipe(recipe, args).method).split(" ")[0] in (out / "README.md").read_text()


@pytest.mark.parametrize("method", TWO_VIEW)
def test_tiny_speech_recipe_trains_on_real_speech_and_exports_data2vec_audio(method, tmp_path, speech_dir):
    from transformers import AutoModel

    from multissl.export.hf import export
    from multissl.train import pretrain

    recipe = _recipe(method, "audio")
    assert re.match(r"# An? ", recipe.read_text())
    args = [*for_method(TINY_AUDIO, recipe), *SMALL[method], "--health.min_rank", "0", "--views.crop_samples", "8000",
            "--data", str(speech_dir), "--max_steps", "2", "--save_steps", "2", "--output_dir", str(tmp_path / "run")]
    loaded = load_recipe(recipe, args)
    assert loaded.method.pool == "mean" and loaded.views_config().crops == 2
    run = pretrain(loaded)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(r["loss"]) for r in rows)
    out = export(run, tmp_path / "export")
    assert type(AutoModel.from_pretrained(out)).__name__ == "Data2VecAudioModel"


@pytest.mark.parametrize("method", FAMILY)
def test_base_recipe_loads_with_its_papers_values(method):
    recipe = ROOT / "recipes" / "vision" / f"{method}-base.yaml"
    assert re.match(r"# [^\n]+? with a ViT-B/16 encoder at 224 px|# MoCo v3 ViT-B/16", recipe.read_text())
    loaded = load_recipe(recipe, ["--data", "x", "--output_dir", "y"])
    assert loaded.method.name == method and loaded.encoder.dim == 768 and loaded.adapter_config().image_size == 224
