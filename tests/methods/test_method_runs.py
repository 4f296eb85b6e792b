"""Every objective besides data2vec runs through the same training machinery: an interrupted run
resumed from its checkpoint ends with the same weights as an uninterrupted one, and (MLM) two ranks
under torchrun follow one rank with the same global batch."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from multissl.recipe import load_recipe
from multissl.train import pretrain
from tests.conftest import ROOT, TINY_AUDIO, TINY_VISION, for_method
from tests.run_driver import StopAt

METHOD_RECIPES = {"mlm": "text/mlm-tiny", "mae": "vision/mae-tiny", "bestrq": "audio/bestrq-tiny"}
METHOD_RECIPES["ijepa"] = "vision/ijepa-tiny"
WITH_TEACHER = ("ijepa",)


@pytest.fixture
def method_args(request, tiny_args, speech_dir, image_dirs):
    """(recipe, overrides without an output folder) of one objective's tiny recipe on real data."""
    recipe = ROOT / "recipes" / f"{METHOD_RECIPES[request.param]}.yaml"
    if request.param == "mlm":
        args = tiny_args[:tiny_args.index("--output_dir")]
    elif request.param == "mae":
        args = [*TINY_VISION, "--data", str(image_dirs[0]), "--method.decoder.dim", "32",
                "--method.decoder.heads", "4", "--method.decoder.ffn_dim", "64"]
    elif request.param == "ijepa":
        args = [*TINY_VISION, "--data", str(image_dirs[0]), "--method.predictor.dim", "16",
                "--method.predictor.heads", "2", "--method.predictor.ffn_dim", "32"]
    else:
        args = [*TINY_AUDIO, "--data", str(speech_dir)]
    return recipe, for_method(args, recipe)


@pytest.mark.parametrize("method_args", list(METHOD_RECIPES), indirect=True)
def test_interrupted_and_resumed_run_ends_with_the_same_weights(method_args, tmp_path):
    recipe, args = method_args
    steps = ["--max_steps", "6", "--save_steps", "3", "--logging_steps", "2"]

    def run(out, **kw):
        return pretrain(load_recipe(recipe, [*args, *steps, "--output_dir", str(out)]), **kw)

    full = run(tmp_path / "full")
    part = tmp_path / "part"
    run(part, callbacks=[StopAt(3)])
    assert (part / "checkpoint-3").is_dir() and not (part / "checkpoint-6").exists()
    run(part, resume=True)
    assert [json.loads(x)["step"] for x in (part / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6]
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    assert any(k.startswith("teacher.") for k in a) == any(m in str(recipe) for m in WITH_TEACHER)
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6


def test_mlm_on_two_ranks_follows_one_rank(tiny_args, tmp_path):
    from tests.test_distributed import launch, rows

    recipe = ROOT / "recipes" / "text" / "mlm-tiny.yaml"
    base = for_method(tiny_args[:tiny_args.index("--output_dir")], recipe)
    same = ["--encoder.dropout", "0", "--encoder.attention_dropout", "0", "--max_steps", "4", "--logging_steps", "1",
            "--save_steps", "4", "--warmup_steps", "1"]
    launch(1, [*base, *same, "--batch_size", "4", "--output_dir", str(tmp_path / "one")], tmp_path / "d1", recipe)
    launch(2, [*base, *same, "--batch_size", "2", "--output_dir", str(tmp_path / "two")], tmp_path / "d2", recipe)
    for a, b in zip(rows(tmp_path / "one"), rows(tmp_path / "two"), strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(a["loss"])), (a, b)
        assert abs(a["mlm_accuracy"] - b["mlm_accuracy"]) <= 1e-4  # over the global batch
    one, r0, r1 = (torch.load(tmp_path / d / f) for d, f in (("d1", "rank0.pt"), ("d2", "rank0.pt"),
                                                                ("d2", "rank1.pt")))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert max((one[k].double() - r0[k].double()).abs().max().item() for k in one) < 1e-4
