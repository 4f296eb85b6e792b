"""BYOL: the loss of a forward pass equals a hand computation (numpy heads with batch norm over each view,
2 - 2 cos both ways) on real views; the target network gets no gradient and changes only by the EMA, on
the paper's cosine schedule (projector included, predictor not); views BYOL cannot use are one-line
errors; tiny runs of the vision and speech recipes on real data export ViTModel / Data2VecAudioModel,
and an interrupted and resumed run ends with the same weights, the target's included."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from multissl.core.adapter import PARTS
from multissl.core.blocks import EncoderConfig
from multissl.data.views import ViewCollator
from multissl.methods.byol import BYOL, BYOLConfig, BYOLHeadConfig
from multissl.modalities.vision import Vision
from multissl.modalities.vision.data import Picture
from multissl.modalities.vision.model import VisionConfig
from multissl.modalities.vision.views import ImageViews, VisionViews
from multissl.recipe import RecipeError, load_recipe
from tests.conftest import ROOT, TINY_AUDIO, TINY_VISION, for_method
from tests.run_driver import StopAt

VISION = ROOT / "recipes" / "vision" / "byol-tiny.yaml"
AUDIO = ROOT / "recipes" / "audio" / "byol-tiny.yaml"
ENC = EncoderConfig(dim=32, depth=2, heads=4, ffn_dim=64, norm="pre", eps=1e-6, dropout=0.0, attention_dropout=0.0,
                    activation_dropout=0.0)
HEAD = BYOLHeadConfig(hidden_dim=24, out_dim=8)
SMALL_HEADS = ["--method.projector.hidden_dim", "32", "--method.projector.out_dim", "16",
               "--method.predictor.hidden_dim", "32", "--method.predictor.out_dim", "16", "--health.min_rank", "0"]


def _model(pooling: str = "cls", run_steps: int = 10) -> tuple[BYOL, Vision]:
    vision = Vision(VisionConfig(image_size=16, patch_size=4, mask_embedding=False))
    torch.manual_seed(0)
    return BYOL(vision, ENC, BYOLConfig(pooling=pooling, projector=HEAD, predictor=HEAD), run_steps), vision


def _views(image_dirs, vision: Vision, n: int = 6) -> dict:
    """Two augmented views of ``n`` real digit images."""
    images = [Picture(str(p)).open() for p in sorted(image_dirs[0].glob("*.png"))[:n]]
    maker = ImageViews(VisionViews(), vision.cfg)
    return ViewCollator(maker)([{"image": im, "seed": (0, 0, i)} for i, im in enumerate(images)])


def _head_by_hand(x: np.ndarray, head: torch.nn.Sequential) -> np.ndarray:
    """Linear -> batch norm on the batch's own statistics (biased variance) -> ReLU -> Linear, in numpy."""
    first, norm, _, last = head
    w1, b1 = first.weight.detach().double().numpy(), first.bias.detach().double().numpy()
    h = x @ w1.T + b1
    h = (h - h.mean(0)) / np.sqrt(h.var(0) + norm.eps)
    h = np.maximum(h * norm.weight.detach().double().numpy() + norm.bias.detach().double().numpy(), 0)
    return h @ last.weight.detach().double().numpy().T + last.bias.detach().double().numpy()


def _two_minus_two_cos(p: np.ndarray, z: np.ndarray) -> float:
    cos = [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(p, z, strict=True)]
    return float(np.mean([2 - 2 * c for c in cos]))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_loss_equals_a_hand_computation_both_ways(pooling, image_dirs):
    model, vision = _model(pooling)
    with torch.no_grad():  # a target network that differs from the online one
        for p in model.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.teacher["projector"]:  # and whose running statistics would differ from the batch's
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.fill_(3.0)
    batch = _views(image_dirs, vision)
    model.train()
    with torch.no_grad():
        out = model(**batch)

    teacher = model.teacher_encoder()  # a stand-alone copy of the target's encoder
    online, target = [], []
    for view in batch["views"]:  # each view on its own: batch norm over that view's rows
        with torch.no_grad():
            x, pad = model.encoder.encode(view)
            tx, _ = teacher.encode(view)
        if pooling == "cls":
            h, th = x[:, 0], tx[:, 0]
        else:
            h, th = x[:, 1:].mean(1), tx[:, 1:].mean(1)  # no padding in images
        z = _head_by_hand(h.double().numpy(), model.projector)
        online.append(_head_by_hand(z, model.predictor))
        target.append(_head_by_hand(th.double().numpy(), model.teacher["projector"]))
    by_hand = _two_minus_two_cos(online[0], target[1]) + _two_minus_two_cos(online[1], target[0])
    same_view = _two_minus_two_cos(online[0], target[0]) + _two_minus_two_cos(online[1], target[1])
    assert abs(by_hand - same_view) > 1e-3  # the test tells the directions apart
    assert abs(float(out["loss"]) - by_hand) < 1e-4, (float(out["loss"]), by_hand)

    cos = np.mean([a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(*online, strict=True)])
    assert abs(float(out["view_cos"]) - cos) < 1e-4
    spread = np.concatenate(target) / np.linalg.norm(np.concatenate(target), axis=1, keepdims=True)
    assert abs(float(out["target_var"]) - np.sqrt(spread.var(0, ddof=1) + 1e-6).mean()) < 1e-4
    assert set(out) == {"loss", "target_var", "pred_var", "student_rank", "teacher_rank", "view_cos"}
    assert 1 <= float(out["student_rank"]) <= 12 and 1 <= float(out["teacher_rank"]) <= 12  # 2 x 6 rows


def test_target_gets_no_gradient_and_changes_only_by_the_ema(image_dirs):
    run_steps = 10
    model, vision = _model(run_steps=run_steps)
    assert set(model.teacher) == {*PARTS, "projector"}  # the whole encoder and the projector, not the predictor
    student_heads = {n for n, _ in model.named_parameters() if n.startswith(("projector.", "predictor."))}
    assert student_heads and not any("predictor" in n for n, _ in model.teacher.named_parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    batch = _views(image_dirs, vision)
    for step in range(2):
        before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
        model(**batch)["loss"].backward()
        assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
        assert all(p.grad is not None for n, p in model.named_parameters() if n in student_heads)
        optimizer.step()
        optimizer.zero_grad()
        after_update = model.teacher.state_dict()
        assert all(torch.equal(before[k], after_update[k]) for k in before)  # forward and optimiser leave it alone
        model.ema_step()
        # the paper's schedule: tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, tau_base 0.996
        tau = 1 - (1 - 0.996) * (math.cos(math.pi * step / run_steps) + 1) / 2
        students = {**{f"{p}.{k}": v for p in PARTS for k, v in getattr(model.encoder, p).state_dict().items()},
                    **{f"projector.{k}": v for k, v in model.projector.state_dict().items()}}
        for key, new in model.teacher.state_dict().items():
            if new.is_floating_point() and "running_" not in key:
                torch.testing.assert_close(new, tau * before[key] + (1 - tau) * students[key], rtol=0, atol=1e-6)
            else:  # batch norm's running statistics and counts: copied from the online network
                assert torch.equal(new, students[key]), key
    assert int(model.teacher["projector"][1].num_batches_tracked) == 4  # the online one: 2 views x 2 steps


def test_views_byol_cannot_use_are_one_line_errors():
    cases = [(VISION, ["--views.local_crops", "2"], "views.local_crops must be 0 for method byol"),
             (VISION, ["--views.global_crops", "3"], "views.global_crops must be 2 for method byol"),
             (AUDIO, ["--views.crops", "3"], "views.crops must be 2 for method byol"),
             (VISION, ["--method.predictor.out_dim", "64"], "method.predictor.out_dim (64) must equal"),
             (VISION, ["--method.pooling", "max"], "method.pooling: 'max' is not one of")]
    for recipe, overrides, message in cases:
        with pytest.raises(RecipeError) as e:
            load_recipe(recipe, overrides)
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    # a partial section keeps the paper's other values (BYOL's own defaults, not the generic ones)
    cfg = load_recipe(None, ["--modality", "vision", "--method.name", "byol", "--method.ema.decay", "0.99",
                             "--method.projector.out_dim", "64", "--method.predictor.out_dim", "64"]).method
    assert (cfg.ema.end_decay, cfg.ema.shape, cfg.ema.anneal_fraction, cfg.projector.hidden_dim) == (1.0, "cosine",
                                                                                                    1.0, 4096)


def test_tiny_vision_run_resumes_exactly_and_exports_vit(tmp_path, image_dirs):
    from transformers import AutoModel

    from multissl.export.hf import export
    from multissl.train import pretrain

    args = [*for_method(TINY_VISION, VISION), *SMALL_HEADS, "--data", str(image_dirs[0]), "--max_steps", "4",
            "--save_steps", "2", "--warmup_steps", "1"]

    def run(out, **kw):
        return pretrain(load_recipe(VISION, [*args, "--output_dir", str(out)]), **kw)

    full = run(tmp_path / "full")
    part = tmp_path / "part"
    run(part, callbacks=[StopAt(2)])
    assert (part / "checkpoint-2").is_dir() and not (part / "checkpoint-4").exists()
    run(part, resume=True)
    rows = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and all(0 < r["loss"] < 8 for r in rows)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert any(k.startswith("teacher.projector.") for k in a) and not any(k.startswith("teacher.predictor") for k in a)
    assert a.keys() == b.keys() and max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6
    for which in ("student", "teacher"):  # the export checks parity with the run's encoder
        out = export(full, tmp_path / which, which=which)
        assert type(AutoModel.from_pretrained(out)).__name__ == "ViTModel"
    assert "BYOL" in (tmp_path / "student" / "README.md").read_text()


def test_tiny_speech_run_exports_data2vec_audio(tmp_path, speech_dir):
    from transformers import AutoModel

    from multissl.export.hf import export
    from multissl.train import pretrain

    args = [*for_method(TINY_AUDIO, AUDIO), *SMALL_HEADS, "--views.crop_samples", "8000", "--data", str(speech_dir),
            "--max_steps", "4", "--output_dir", str(tmp_path / "run")]
    recipe = load_recipe(AUDIO, args)
    assert recipe.method.pooling == "mean" and recipe.views_config().crops == 2
    run = pretrain(recipe)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(0 < r["loss"] < 8 and r["target_var"] > 0 for r in rows)
    out = export(run, tmp_path / "export")
    assert type(AutoModel.from_pretrained(out)).__name__ == "Data2VecAudioModel"
