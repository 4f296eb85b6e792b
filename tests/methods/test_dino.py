"""DINO with iBOT and the DINOv2 options: the loss of a forward pass equals the papers' definitions
computed here view by view (numpy loops), the teacher sees the global views only and changes only by
the EMA, the centres move as the paper says and only in training, the collapse check catches both
collapses, each recipe trains on real images and exports a ViTModel, two ranks follow one rank with
the same global batch, and a run killed with SIGKILL resumes exactly."""

from __future__ import annotations

import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from multissl.core.adapter import PARTS
from multissl.core.blocks import EncoderConfig
from multissl.core.heads import PrototypeHeadConfig
from multissl.core.health import check_health
from multissl.data.masking import MaskConfig
from multissl.data.views import ViewCollator
from multissl.methods import get_method
from multissl.methods.dino import DINO, DINOConfig
from multissl.modalities.vision.model import Vision, VisionConfig
from multissl.modalities.vision.views import ImageViews, VisionViews
from multissl.recipe import load_recipe
from tests.conftest import ROOT
from tests.run_driver import spawn

RECIPES = ROOT / "recipes" / "vision"
ENC = EncoderConfig(dim=32, depth=2, heads=4, ffn_dim=64, norm="pre", eps=1e-6, dropout=0.0, attention_dropout=0.0,
                    activation_dropout=0.0)
VISION = VisionConfig(image_size=16, patch_size=4)
HEAD = PrototypeHeadConfig(hidden_dim=32, bottleneck_dim=16, layers=3, prototypes=64)
PATCH_HEAD = PrototypeHeadConfig(hidden_dim=32, bottleneck_dim=16, layers=2, prototypes=48)
RUN_STEPS, STEP = 20, 3  # a forward at update 3 of 20, inside the temperature warm-up (half the run)


def _model(**kw) -> DINO:
    cfg = DINOConfig(head=HEAD, patch_head=PATCH_HEAD, teacher_temp_warmup=0.5, **kw)
    torch.manual_seed(0)
    model = DINO(Vision(replace(VISION, mask_embedding=cfg.ibot_weight > 0)), ENC, cfg, run_steps=RUN_STEPS)
    trained = {k for k, p in _student(model).items() if p.requires_grad}
    with torch.no_grad():  # a teacher unlike its student and centres away from 0, so that each one matters
        for k, p in model.teacher.named_parameters():
            if k in trained:
                p.add_(torch.randn_like(p) * 0.05)
        model.center.normal_(0, 0.3)
        if model.ibot:
            model.patch_center.normal_(0, 0.3)
        model.ema_updates.fill_(STEP)
    return model


def _student(model: DINO) -> dict[str, torch.Tensor]:
    """The student's tensors under the teacher's names (encoder parts, then the heads)."""
    parts = {p: getattr(model.encoder, p) for p in PARTS} | {h: getattr(model, h) for h in model.teacher_heads}
    return {f"{name}.{k}": v for name, m in parts.items() for k, v in [*m.named_parameters(), *m.named_buffers()]}


@pytest.fixture(scope="module")
def batch(image_dirs) -> dict:
    """2 global views (16 px) and 2 local crops (8 px) of 4 real photos, the global views masked at 50%."""
    images = [Image.open(p).convert("RGB") for p in image_dirs[2][:4]]
    maker = ImageViews(VisionViews(global_crops=2, local_crops=2, local_size=8), VISION)
    out = ViewCollator(maker, MaskConfig(kind="random", prob=0.5))([{"image": im, "seed": (0, 0, i)}
                                                                     for i, im in enumerate(images)])
    out["view_masks"][0][1] = False  # an image without a masked patch: it adds 0 to iBOT's mean
    return out


# --- the definitions, view by view, in float64 numpy ------------------------------------------------

def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(x))


def _sinkhorn(scores: np.ndarray, eps: float, iterations: int) -> np.ndarray:
    """SwAV / DINOv2: rows and columns of exp(scores / eps) rescaled in turn (rows: samples)."""
    q = np.exp(scores / eps).T
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(1, keepdims=True) * k
        q /= q.sum(0, keepdims=True) * n
    return (q * n).T


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _by_hand(model: DINO, batch: dict) -> dict[str, float]:
    """The loss and the teacher's entropy and KL, one view at a time."""
    cfg, enc, views, g = model.cfg, model.encoder, batch["views"], batch["global_views"]
    done = min(1.0, STEP / (cfg.teacher_temp_warmup * RUN_STEPS))
    temp = cfg.teacher_temp_start + (cfg.teacher_temp - cfg.teacher_temp_start) * done
    patch_temp = cfg.patch_teacher_temp_start + (cfg.patch_teacher_temp - cfg.patch_teacher_temp_start) * done
    teacher = model.teacher_encoder()

    def pooled(x):
        return x[:, 0] if cfg.pool == "cls" else x[:, 1:].mean(1)

    s_logits, t_logits, s_feats, s_patches, t_patches = [], [], [], [], []
    with torch.no_grad():
        for v, inputs in enumerate(views):
            feats, _ = enc.local(inputs)
            if v < g and model.ibot:  # masked patches replaced by the mask embedding
                feats = torch.where(batch["view_masks"][v][..., None], enc.local.mask_embedding, feats)
            x = enc.context(feats, None)
            for block in enc.blocks:
                x, _ = block(x, None)
            x = enc.norm(x)
            s_logits.append(_np(model.head(pooled(x))))
            if v < g:
                s_feats.append(_np(pooled(x)))
                t = teacher.encode(inputs)[0]
                t_logits.append(_np(model.teacher["head"](pooled(t))))
                if model.ibot:
                    s_head = model.head if cfg.shared_head else model.patch_head
                    t_head = model.teacher["head" if cfg.shared_head else "patch_head"]
                    s_patches.append(_np(s_head(x[:, 1:])))
                    t_patches.append(_np(t_head(t[:, 1:])))
    b, k = t_logits[0].shape
    if cfg.centering == "center":
        targets = [_softmax((t - _np(model.center)) / temp) for t in t_logits]
    else:  # one Sinkhorn-Knopp over both global views
        both = _sinkhorn(np.concatenate(t_logits), temp, cfg.sinkhorn_iterations)
        targets = [both[i * b:(i + 1) * b] for i in range(g)]
    ce, kl = [], []
    for i, p in enumerate(targets):
        for j, s in enumerate(s_logits):
            if j != i:
                log_q = _log_softmax(s / cfg.student_temp)
                ce.append(np.mean([-(p[n] * log_q[n]).sum() for n in range(b)]))
                kl.append(np.mean([(p[n] * (np.log(p[n]) - log_q[n])).sum() for n in range(b)]))
    loss = np.mean(ce)
    entropy = np.mean([-(p[n] * np.log(p[n])).sum() for p in targets for n in range(b)])

    if model.ibot:
        masks = [m.numpy() for m in batch["view_masks"]]
        if cfg.centering == "center":
            patch_targets = [_softmax((t - _np(model.patch_center)) / patch_temp) for t in t_patches]
        else:  # Sinkhorn-Knopp over the masked patches of both views
            rows = _sinkhorn(np.concatenate([t[m] for t, m in zip(t_patches, masks, strict=True)]), patch_temp,
                             cfg.sinkhorn_iterations)
            patch_targets, start = [], 0
            for t, m in zip(t_patches, masks, strict=True):
                p = np.zeros_like(t)
                p[m] = rows[start:start + m.sum()]
                patch_targets.append(p)
                start += m.sum()
        per_view = []
        for p, s, m in zip(patch_targets, s_patches, masks, strict=True):
            per_image = []
            for n in range(b):
                ces = [-(p[n, t] * _log_softmax(s[n, t] / cfg.student_temp)).sum() for t in np.flatnonzero(m[n])]
                per_image.append(np.mean(ces) if ces else 0.0)
            per_view.append(np.mean(per_image))
        loss += cfg.ibot_weight * np.mean(per_view)
    if cfg.koleo_weight > 0:
        koleo = 0.0
        for f in s_feats:
            f = f / np.linalg.norm(f, axis=1, keepdims=True)
            nearest = [min(np.linalg.norm(f[a] - f[c]) for c in range(b) if c != a) for a in range(b)]
            koleo += -np.mean(np.log(np.asarray(nearest) + 1e-8))
        loss += cfg.koleo_weight * koleo
    return {"loss": loss, "teacher_entropy": entropy, "kl": np.mean(kl)}


CASES = {
    "dino": {},
    "ibot-shared-koleo": {"ibot_weight": 0.5, "koleo_weight": 0.1},
    "dinov2-sinkhorn-separate-mean": {"centering": "sinkhorn", "ibot_weight": 1.0, "shared_head": False,
                                      "koleo_weight": 0.1, "pool": "mean"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_loss_is_the_papers_definition(case, batch):
    model = _model(**CASES[case]).eval()
    with torch.no_grad():
        out = model(**batch)
    want = _by_hand(model, batch)
    for key, value in want.items():
        assert abs(float(out[key]) - value) <= 1e-5 * max(1.0, abs(value)), (key, float(out[key]), value)


def test_local_crops_never_reach_the_teacher_which_sees_the_global_views_unmasked(batch):
    model = _model(ibot_weight=1.0).train()
    teacher_inputs, student_inputs = [], []
    model.teacher["local"].register_forward_hook(lambda m, i, o: teacher_inputs.append(i[0]["pixel_values"]))
    model.encoder.local.register_forward_hook(lambda m, i, o: student_inputs.append(i[0]["pixel_values"]))
    model(**batch)
    views = [v["pixel_values"] for v in batch["views"]]
    assert len(teacher_inputs) == 1 and torch.equal(teacher_inputs[0], torch.cat(views[:2]))
    # the student: the global views in one call, the local crops (one size) in another
    assert [tuple(x.shape) for x in student_inputs] == [(8, 3, 16, 16), (8, 3, 8, 8)]
    assert torch.equal(student_inputs[1], torch.cat(views[2:]))


def test_the_teacher_changes_only_by_the_ema_head_included(batch):
    model = _model(ibot_weight=1.0, shared_head=False, freeze_prototypes=STEP + 1).train()
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    assert any(k.startswith("head.") for k in before) and any(k.startswith("patch_head.") for k in before)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch)["loss"].backward()
    # the prototypes are frozen at update 3 of freeze_prototypes 4: a zero gradient, the MLP's is not zero
    assert float(model.head.prototypes.grad.abs().max()) == 0.0 and float(model.head.mlp[0].weight.grad.abs().max()) > 0
    opt.step()
    assert all(torch.equal(v, before[k]) for k, v in model.teacher.state_dict().items())
    student = _student(model)
    assert student.keys() == before.keys()
    assert not torch.equal(student["head.mlp.0.weight"], before["head.mlp.0.weight"])
    decay = model.ema_step()
    assert 0 < decay < 1
    for k, v in model.teacher.state_dict().items():
        s = student[k].detach()  # parameters that do not train (the fixed positions) are copied
        want = decay * before[k] + (1 - decay) * s if student[k].requires_grad else s
        assert torch.allclose(v, want, rtol=0, atol=1e-6), k
    # one update later the prototypes train
    model.zero_grad()
    model(**batch)["loss"].backward()
    assert float(model.head.prototypes.grad.abs().max()) > 0


def test_the_centres_move_as_the_paper_says_and_only_in_training(batch):
    model = _model(ibot_weight=1.0, center_momentum=0.8).train()
    center, patch_center = model.center.clone(), model.patch_center.clone()
    with torch.no_grad():
        model(**batch)
        teacher = model.teacher_encoder()
        t = teacher.encode({"pixel_values": torch.cat([v["pixel_values"] for v in batch["views"][:2]])})[0]
        logits, patches = _np(model.teacher["head"](t[:, 0])), _np(model.teacher["head"](t[:, 1:]))
    # c <- m c + (1 - m) mean of the teacher's scores over every global view of the batch (every patch)
    assert np.allclose(_np(model.center), 0.8 * _np(center) + 0.2 * logits.mean(0), atol=1e-6)
    assert np.allclose(_np(model.patch_center), 0.8 * _np(patch_center) + 0.2 * patches.reshape(-1, 64).mean(0),
                       atol=1e-6)
    moved = model.center.clone()
    with torch.no_grad():
        model.eval()(**batch)
    assert torch.equal(model.center, moved)
    with torch.no_grad():  # a non-finite teacher output leaves the centre as it was
        model.teacher["head"].prototypes[0, 0] = float("nan")
        model.train()(**batch)
    assert torch.equal(model.center, moved)
    sinkhorn = _model(centering="sinkhorn").train()
    start = sinkhorn.center.clone()
    with torch.no_grad():
        sinkhorn(**batch)
    assert torch.equal(sinkhorn.center, start)  # DINOv2's centring keeps no running mean


class FixedScores(torch.nn.Module):
    """A stand-in head: the given scores for the rows it is fed, in order (view after view)."""

    def __init__(self, scores: torch.Tensor):
        super().__init__()
        self.scores = scores

    def forward(self, x: torch.Tensor, frozen_prototypes: bool = False) -> torch.Tensor:
        return self.scores[: x.shape[0]] + 0.0 * x.sum()


def test_the_collapse_check_catches_both_dino_collapses(batch):
    health = load_recipe(RECIPES / "dino-tiny.yaml").health
    assert health.min_target_var > 0 and health.min_rank > 0
    check = replace(health, check_after=0)
    views, b, k = len(batch["views"]), 4, HEAD.prototypes
    own = torch.eye(k)[torch.arange(b).repeat(views)] * 10  # each image on a prototype of its own, in every view
    cases = {"healthy": own + 0.1 * torch.randn(views * b, k), "uniform": torch.zeros(views * b, k),
             "one-hot": (torch.eye(k)[0] * 10).expand(views * b, k)}
    found = {}
    for name, scores in cases.items():
        model = _model().train()
        model.center.zero_()
        model.head = FixedScores(scores)
        model.teacher["head"] = FixedScores(scores[: 2 * b])
        with torch.no_grad():
            metrics = {key: float(v) for key, v in model(**batch).items()}
        metrics.pop("student_rank"), metrics.pop("teacher_rank")  # the backbone is checked below
        found[name] = check_health(1, metrics, check)
    assert found["healthy"] is None
    assert found["uniform"].startswith("target_var") and found["one-hot"].startswith("target_var")
    model = _model().train()  # a collapsed backbone: every image gives the same features
    with torch.no_grad():
        model.encoder.norm.weight.zero_()
        model.teacher["norm"].weight.zero_()
        metrics = {key: float(v) for key, v in model(**batch).items()}
    assert check_health(1, metrics, check).startswith("student_rank")
    assert metrics["teacher_rank"] < health.min_rank


# --- runs -------------------------------------------------------------------------------------------

TINY = ["--encoder.dim", "32", "--encoder.depth", "2", "--encoder.heads", "4", "--encoder.ffn_dim", "64",
        "--method.head.hidden_dim", "32", "--method.head.bottleneck_dim", "16", "--method.head.prototypes", "64",
        "--image_size", "16", "--patch_size", "4", "--views.global_size", "16", "--views.local_size", "8",
        "--views.local_crops", "2", "--report_to", "none", "--warmup_steps", "0", "--health.check_after", "0",
        "--health.min_target_var", "0", "--health.min_pred_var", "0", "--health.min_rank", "0"]


@pytest.mark.parametrize("name", ["dino-tiny", "dino-base"])
def test_a_tiny_run_of_the_recipe_exports_a_vit(name, image_dirs, tmp_path):
    from transformers import ViTModel

    from multissl.export.hf import export
    from multissl.train import pretrain

    recipe = load_recipe(RECIPES / f"{name}.yaml", [*TINY, "--data", str(image_dirs[0]), "--max_steps", "2",
                                                    "--batch_size", "4", "--logging_steps", "1",
                                                    "--save_steps", "2", "--precision", "fp32",
                                                    "--output_dir", str(tmp_path / "run")])
    assert get_method(recipe.method.name) is DINO
    run = pretrain(recipe)
    out = export(run, tmp_path / "out")  # checks parity with the HF class
    assert isinstance(ViTModel.from_pretrained(out), ViTModel)


def test_config_errors_name_the_key():
    for key, value, message in [("teacher_temp", 0.0, "method.teacher_temp must be > 0"),
                                ("centering", "mean", "method.centering must be center or sinkhorn"),
                                ("teacher_temp_warmup", 1.5, "method.teacher_temp_warmup must lie in [0, 1]")]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            replace(DINOConfig(), **{key: value}).validate()
    with pytest.raises(ValueError, match="adapter.mask_embedding"):
        DINO(Vision(replace(VISION, mask_embedding=False)), ENC, DINOConfig(head=HEAD, ibot_weight=1.0))
    with pytest.raises(ValueError, match="mask.kind 'none'"):
        DINO.check(DINOConfig(ibot_weight=1.0), ENC, MaskConfig(kind="none"))


@pytest.fixture(scope="module")
def ibot_args(image_dirs) -> list[str]:
    """ibot-tiny made tiny, with KoLeo on (every part of the loss reads the global batch), and the teacher
    temperature's warm-up and the prototypes' freeze running across the checkpoint at update 3."""
    return [*TINY, "--data", str(image_dirs[0]), "--method.koleo_weight", "0.1", "--max_steps", "6",
            "--save_steps", "3", "--logging_steps", "1", "--warmup_steps", "1", "--method.freeze_prototypes", "4",
            "--method.teacher_temp_start", "0.04", "--method.teacher_temp", "0.07", "--method.teacher_temp_warmup",
            "1.0", "--mask.length", "2"]


@pytest.fixture(scope="module")
def one_rank(ibot_args, tmp_path_factory) -> Path:
    """ibot-tiny on one process with 4 images per update; its folder holds the run and the dump."""
    from tests.test_distributed import launch

    root = tmp_path_factory.mktemp("one")
    launch(1, [*ibot_args, "--batch_size", "4", "--output_dir", str(root / "run")], root / "dump",
           RECIPES / "ibot-tiny.yaml")
    return root


def test_two_ranks_follow_one_rank_with_the_same_global_batch(one_rank, ibot_args, tmp_path):
    from tests.test_distributed import launch, rows

    launch(2, [*ibot_args, "--batch_size", "2", "--output_dir", str(tmp_path / "run")], tmp_path / "dump",
           RECIPES / "ibot-tiny.yaml")
    for a, b in zip(rows(one_rank / "run"), rows(tmp_path / "run"), strict=True):
        for key in ("loss", "dino_loss", "ibot_loss", "koleo_loss", "teacher_entropy", "target_var"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), (key, a, b)
    one, r0, r1 = (torch.load(d / "dump" / f) for d, f in ((one_rank, "rank0.pt"), (tmp_path, "rank0.pt"),
                                                              (tmp_path, "rank1.pt")))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert {"center", "patch_center"} <= set(one) and float(one["center"].abs().max()) > 0
    assert max((one[k].double() - r0[k].double()).abs().max().item() for k in one) < 1e-4
    from transformers import ViTModel

    from multissl.export.hf import export

    out = export(one_rank / "run", tmp_path / "export")  # ibot-tiny's run: parity with the HF class checked
    assert isinstance(ViTModel.from_pretrained(out), ViTModel)


def test_a_run_killed_with_sigkill_resumes_exactly(one_rank, ibot_args, tmp_path):
    args = [*ibot_args, "--batch_size", "4", "--output_dir", str(tmp_path / "run")]
    killed = spawn(RECIPES / "ibot-tiny.yaml", args, {"STEP_SLEEP": "0.3"})
    deadline = time.time() + 300
    while not (tmp_path / "run" / "checkpoint-3").is_dir():  # published whole, by a rename
        assert killed.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "checkpoint-6").exists() and not (tmp_path / "run" / "model.safetensors").exists()
    resumed = spawn(RECIPES / "ibot-tiny.yaml", [*args, "--resume"], {})
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    a = load_file(str(one_rank / "run" / "model.safetensors"))
    b = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert a.keys() == b.keys() and {"center", "patch_center"} <= set(a)
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6
