"""Views end to end: a recipe's ``views`` section, a run of an objective that asks for views (a
test-only one here: the real ones are added to ``multissl/methods`` later), resume, the picture
written at the start of a run and the ``multissl views`` command."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from safetensors.torch import load_file

from multissl.core.adapter import StudentView
from multissl.core.encoder import extend_padding, mean_over
from multissl.methods import METHODS, Method
from multissl.recipe import RecipeError, keys_help, load_recipe
from multissl.train import VIEWS_PICTURE, pretrain
from tests.run_driver import StopAt


@dataclass
class ViewCheckConfig:
    """The test objective's section."""

    name: str = "viewcheck"
    """Its registered name."""

    view_masks: bool = False
    """Ask for masks of the global views (left out of the pooled outputs)."""

    def validate(self, where: str = "method") -> None:
        pass


class ViewCheck(Method):
    """Test-only: pulls each view's mean-pooled, normalised output towards the first view's
    (2 - 2 cos, as BYOL's loss), so that training reads every view and mask the collator makes."""

    name = "viewcheck"
    config_class = ViewCheckConfig
    seen: list[dict] = []

    @classmethod
    def student_view(cls, cfg: ViewCheckConfig) -> StudentView:
        return StudentView(dense=False, views=True, view_masks=cfg.view_masks)

    def forward(self, views: list[dict[str, torch.Tensor]], view_masks: list[torch.Tensor] | None = None,
                **_: object) -> dict[str, torch.Tensor]:
        ViewCheck.seen.append({"shapes": [tuple(v[next(iter(v))].shape) for v in views],
                               "masks": None if view_masks is None else [m.clone() for m in view_masks]})
        pooled = []
        for i, inputs in enumerate(views):
            states, pad = self.encoder(inputs)
            if view_masks is not None and i < len(view_masks):
                pad = pad | extend_padding(view_masks[i], self.encoder.num_extra)
            pooled.append(F.normalize(mean_over(self.encoder.norm(states[-1]), pad), dim=-1))
        loss = torch.stack([(2 - 2 * (pooled[0] * p).sum(-1)).mean() for p in pooled[1:]]).mean()
        return {"loss": loss}


@pytest.fixture
def viewcheck(monkeypatch):
    monkeypatch.setitem(METHODS, "viewcheck", ViewCheck)
    ViewCheck.seen = []
    return ViewCheck


TINY = {"encoder": {"dim": 32, "depth": 2, "heads": 4, "ffn_dim": 64, "dropout": 0.0, "attention_dropout": 0.0,
                    "activation_dropout": 0.0},
        "health": {"check_after": 0, "min_target_var": 0.0, "min_pred_var": 0.0},
        "train": {"max_steps": 4, "batch_size": 4, "lr": 1.0e-3, "logging_steps": 2, "save_steps": 2,
                  "report_to": "none"}}


def _recipe(tmp_path: Path, modality: str, **sections) -> Path:
    adapter = ({"image_size": 16, "patch_size": 4} if modality == "vision" else
               {"conv_dim": [32] * 7, "pos_conv_groups": 4, "pos_conv_depth": 2, "max_samples": 16000})
    encoder = {**TINY["encoder"], "norm": "pre" if modality == "vision" else "post"}
    raw = {**TINY, "modality": modality, "encoder": encoder, "adapter": adapter, **sections}
    path = tmp_path / f"{modality}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_views_section_is_checked_against_the_modality(viewcheck, tmp_path):
    views = {"global_crops": 2, "local_crops": 4, "local_size": 8, "blur": [1.0, 0.1]}
    recipe = load_recipe(_recipe(tmp_path, "vision", method={"name": "viewcheck"}, views=views))
    cfg = recipe.views_config()
    assert (cfg.local_crops, cfg.local_size, cfg.blur, cfg.solarize) == (4, 8, (1.0, 0.1), (0.0, 0.2))
    listed = keys_help(recipe)  # `multissl pretrain RECIPE --help` lists the views keys of such a method
    assert "views (VisionViews):" in listed and "--views.local_crops  int = 4" in listed
    assert "--views." not in keys_help(load_recipe(_recipe(tmp_path, "vision", method={"top_k": 2})))  # data2vec: none
    over = load_recipe(_recipe(tmp_path, "vision", method={"name": "viewcheck"}),
                       ["--views.local_crops", "6", "--views.global_scale", "[0.3, 1.0]"])
    assert over.views_config().local_crops == 6 and over.views_config().global_scale == (0.3, 1.0)
    cases = [("vision", {"local_crop": 2}, "unknown key 'views.local_crop' (did you mean 'local_crops'?)"),
             ("vision", {"global_scale": [0.0, 1.0]}, "views.global_scale must satisfy 0 < low <= high <= 1"),
             ("vision", {"blur": [1.0, "often"]}, "views.blur[1]: expected a number"),
             ("audio", {"crop_samples": 16000, "mixing": 0.2}, "unknown key 'views.mixing' (did you mean 'mix'?)"),
             ("audio", {"mix": 1.5}, "views.mix must lie in [0, 1)")]
    for modality, section, message in cases:
        with pytest.raises(RecipeError) as e:
            load_recipe(_recipe(tmp_path, modality, method={"name": "viewcheck"}, views=section))
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_views_where_they_cannot_be_made_or_are_not_used_are_one_line_errors(viewcheck, tmp_path, monkeypatch):
    from multissl.modalities.text import Text

    monkeypatch.setattr(Text, "views_class", None)  # a modality that makes no views (text makes sentence views)
    text = tmp_path / "text.yaml"
    text.write_text(yaml.safe_dump({"modality": "text", "method": {"name": "viewcheck"}}))
    with pytest.raises(RecipeError, match=r"views: modality 'text' makes no augmented views \(method 'viewcheck'"):
        load_recipe(text)
    with pytest.raises(RecipeError, match="views: method 'data2vec' takes no augmented views"):
        load_recipe(_recipe(tmp_path, "vision", views={"local_crops": 2}))


@pytest.mark.parametrize("modality", ["vision", "audio"])
def test_a_views_run_trains_on_every_view_and_resumes_exactly(modality, viewcheck, tmp_path, image_dirs, speech_dir):
    data = image_dirs[0] if modality == "vision" else speech_dir
    views = ({"local_crops": 2, "local_size": 8} if modality == "vision" else {"crops": 2, "crop_samples": 8000})
    recipe = _recipe(tmp_path, modality, method={"name": "viewcheck", "view_masks": True}, views=views,
                     mask={"kind": "random", "prob": 0.5})

    def run(out, **kw):
        return pretrain(load_recipe(recipe, ["--data", str(data), "--output_dir", str(out)]), **kw)

    full = run(tmp_path / "full")
    first = ViewCheck.seen[0]
    if modality == "vision":
        assert first["shapes"] == [(4, 3, 16, 16)] * 2 + [(4, 3, 8, 8)] * 2
        assert [m.shape for m in first["masks"]] == [(4, 16)] * 2
    else:
        assert first["shapes"] == [(4, 8000)] * 2 and len(first["masks"]) == 2
    assert all(int(m.sum()) > 0 for m in first["masks"])
    saved = yaml.safe_load((full / "recipe.yaml").read_text())["views"]  # the run records every setting
    assert saved[next(iter(views))] == next(iter(views.values())) and len(saved) > len(views)
    assert Image.open(full / VIEWS_PICTURE).format == "PNG"
    if modality == "audio":  # resuming is the same machinery for both; once is enough for the test budget
        return
    part = tmp_path / "part"
    run(part, callbacks=[StopAt(2)])
    run(part, resume=True)
    assert [json.loads(x)["step"] for x in (part / "metrics.jsonl").read_text().splitlines()] == [2, 4]
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys() and max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6


@pytest.mark.parametrize("modality", ["vision", "audio"])
def test_the_views_command_draws_a_png(modality, tmp_path, image_dirs, speech_dir, capsys):
    from multissl.cli import main

    recipe = f"recipes/{modality}/tiny.yaml"
    data = image_dirs[2][0].parent if modality == "vision" else speech_dir
    out = tmp_path / "grid.png"
    assert main(["views", recipe, "--data", str(data), "--out", str(out), "--n", "3"]) == 0
    img = Image.open(out)
    assert img.format == "PNG" and img.size[0] > 200 and img.size[1] > 200
    assert str(out) in capsys.readouterr().out
    assert main(["views", recipe, "--data", str(data), "--out", str(out), "--local_crop", "2"]) == 2
    assert "unknown override --local_crop" in capsys.readouterr().err
