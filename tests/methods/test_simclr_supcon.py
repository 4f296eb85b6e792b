"""SimCLR and SupCon on real images, speech and text: tiny runs of their recipes (an interrupted and
resumed SimCLR run ends with the same weights), labels from a table through the view collator (a label
seen once included) into a loss equal to the paper's L_out computed naively from the model's own
projections, and one-line errors for labels that cannot be had."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from multissl.data.labels import label_id
from multissl.recipe import RecipeError, load_recipe, recipe_info
from multissl.train import build_model, pretrain
from tests.conftest import ROOT
from tests.run_driver import StopAt

SMALL = ["--encoder.dim", "32", "--encoder.depth", "2", "--encoder.heads", "4", "--encoder.ffn_dim", "64",
         "--projector.hidden_dim", "32", "--projector.out_dim", "16", "--batch_size", "8", "--logging_steps", "2",
         "--save_steps", "3", "--report_to", "none", "--warmup_steps", "0", "--health.check_after", "0"]
VISION = ["--image_size", "16", "--patch_size", "4"]
AUDIO = ["--conv_dim", "[32, 32, 32, 32, 32, 32, 32]", "--pos_conv_groups", "4", "--max_samples", "16000",
         "--views.crop_samples", "8000"]
TEXT = ["--adapter.max_length", "24"]


def recipe(name: str):
    return ROOT / "recipes" / f"{name}.yaml"


def rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def labelled_images(image_dirs, tmp_path_factory):
    """The held-out digits' labels.csv (path, label), with one image relabelled to a label seen once."""
    df = pd.read_csv(image_dirs[1])
    df.loc[2, "label"] = 99
    path = image_dirs[1].parent / "labels-once.csv"
    df.to_csv(path, index=False)
    return path, df


def test_the_new_recipes_load_and_describe_themselves():
    for name, method in [("vision/simclr-tiny", "simclr"), ("audio/simclr-tiny", "simclr"),
                         ("vision/supcon-tiny", "supcon"), ("text/supcon-tiny", "supcon"),
                         ("text/simcse-tiny", "simcse"), ("text/simcse-base", "simcse")]:
        info = recipe_info(name)
        assert info.method == method and len(info.description) > 20, info


def test_simclr_on_images_resumes_exactly(image_dirs, tmp_path):
    args = [*SMALL, *VISION, "--data", str(image_dirs[0]), "--max_steps", "6"]

    def run(out, **kw):
        return pretrain(load_recipe(recipe("vision/simclr-tiny"), [*args, "--output_dir", str(out)]), **kw)

    full = run(tmp_path / "full")
    logged = rows(full)
    assert [r["step"] for r in logged] == [2, 4, 6] and all(np.isfinite(r["loss"]) for r in logged)
    assert all(r["student_rank"] > 1.5 and r["pred_var"] > 0 for r in logged)  # not collapsed
    part = tmp_path / "part"
    run(part, callbacks=[StopAt(3)])
    run(part, resume=True)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("projector.") for k in a)
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6


def test_simclr_on_speech(speech_dir, tmp_path):
    run = pretrain(load_recipe(recipe("audio/simclr-tiny"), [*SMALL, *AUDIO, "--data", str(speech_dir), "--batch_size",
                                                             "4", "--logging_steps", "1", "--max_steps", "2",
                                                             "--output_dir", str(tmp_path / "a")]))
    logged = rows(run)
    assert len(logged) == 2 and all(np.isfinite(r["loss"]) and r["pred_var"] > 0 for r in logged)


def naive_l_out(z: np.ndarray, labels: list[int], tau: float) -> float:
    """Khosla et al. eq. 2 over the V x N embeddings z (V, N, D): for each anchor with a positive, the mean
    over its positives of -log(exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau)); averaged over anchors."""
    v, n, _ = z.shape
    flat = [(z[a, i] / np.linalg.norm(z[a, i]), labels[i]) for a in range(v) for i in range(n)]
    losses = []
    for i, (zi, yi) in enumerate(flat):
        others = [k for k in range(len(flat)) if k != i]
        denominator = sum(np.exp(zi @ flat[k][0] / tau) for k in others)
        positives = [k for k in others if flat[k][1] == yi]
        if positives:
            losses.append(np.mean([-np.log(np.exp(zi @ flat[p][0] / tau) / denominator) for p in positives]))
    return float(np.mean(losses))


def test_supcon_labels_come_through_the_collator_into_l_out(labelled_images):
    path, df = labelled_images
    _, model, dataset, collator, _, _ = build_model(load_recipe(
        recipe("vision/supcon-tiny"), [*SMALL, *VISION, "--data", str(path), "--image_column", "path"]))
    batch = collator([dataset[i] for i in range(8)])
    want = [label_id(v) for v in df["label"][:8]]
    assert batch["labels"].tolist() == want and want.count(label_id(99)) == 1
    model.train()
    torch.manual_seed(0)
    loss = model(**batch)["loss"]
    torch.manual_seed(0)
    with torch.no_grad():
        _, z = model.projections(batch["views"])  # the same batch-norm statistics as the forward's
    assert loss.item() == pytest.approx(naive_l_out(z.double().numpy(), want, 0.1), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.projector.parameters())


def test_supcon_runs_on_images_and_text(labelled_images, tmp_path, kjv_file, tokenizer_dir, kjv_rows):
    path, _ = labelled_images
    run = pretrain(load_recipe(recipe("vision/supcon-tiny"), [*SMALL, *VISION, "--data", str(path), "--image_column",
                                                              "path", "--max_steps", "2", "--output_dir",
                                                              str(tmp_path / "v")]))
    assert np.isfinite(rows(run)[0]["loss"])
    table = tmp_path / "verses.jsonl"
    pd.DataFrame(kjv_rows[::300][:80]).to_json(table, orient="records", lines=True)
    run = pretrain(load_recipe(recipe("text/supcon-tiny"), [*SMALL, *TEXT, "--data", str(table), "--tokenizer",
                                                            str(tokenizer_dir), "--label-column", "section",
                                                            "--max_steps", "2", "--output_dir", str(tmp_path / "t")]))
    assert np.isfinite(rows(run)[0]["loss"])


def test_labels_that_cannot_be_had_are_one_line_errors(image_dirs, labelled_images, tmp_path):
    path, df = labelled_images
    df.drop(columns=["label"]).assign(digit=df["label"]).to_csv(tmp_path / "other.csv", index=False)
    cases = [([*VISION, "--data", str(image_dirs[0])], "data.label_column: " + str(image_dirs[0])),
             ([*VISION, "--data", str(tmp_path / "other.csv"), "--image_column", "path"],
              "data.label_column: " + str(tmp_path / "other.csv") + " has no column 'label'"),
             ([*VISION, "--data", str(path)], "data.image_column: " + str(path) + " has no column 'image'")]
    for args, message in cases:
        with pytest.raises(RecipeError) as e:
            build_model(load_recipe(recipe("vision/supcon-tiny"), [*SMALL, *args]))
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_image_labels_from_a_datasets_folder(labelled_images, tmp_path):
    import datasets

    path, df = labelled_images
    rows = df[:12]
    ds = datasets.Dataset.from_dict({"img": [str(path.parent / p) for p in rows["path"]],
                                     "digit": rows["label"].tolist()}).cast_column("img", datasets.Image())
    ds.save_to_disk(str(tmp_path / "saved"))
    _, _, dataset, collator, _, _ = build_model(load_recipe(
        recipe("vision/supcon-tiny"), [*SMALL, *VISION, "--data", str(tmp_path / "saved"), "--image_column", "img",
                                       "--label-column", "digit"]))
    assert len(dataset) == 12
    assert collator([dataset[i] for i in range(12)])["labels"].tolist() == [label_id(v) for v in rows["label"]]
