from pathlib import Path

import pytest

from multissl.recipe import RecipeError, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_loads_and_validates(path):
    recipe = load_recipe(path)
    assert recipe.train.output_dir == "" and recipe.data.path == ""  # no hard-coded paths
    # the short overrides users and tools pass mean one key in every objective's recipe
    short = load_recipe(path, ["--seed", "2", "--lr", "1e-4", "--max_steps", "3", "--batch_size", "2", "--data", "d/",
                               "--output_dir", "o/", "--precision", "fp32", "--logging_steps", "1"])
    assert (short.train.seed, short.train.max_steps, short.data.path) == (2, 3, "d/")


def test_text_recipes_follow_the_reference():
    root = Path(__file__).resolve().parents[1]
    v1 = load_recipe(root / "recipes/text/data2vec-base.yaml")
    assert (v1.method.version, v1.method.top_k, v1.method.target_norm, v1.method.loss_beta) == (1, 10, "layer", 4.0)
    assert (v1.mask.kind, v1.mask.prob) == ("bert", 0.15)
    assert (v1.method.ema.decay, v1.method.ema.end_decay, v1.method.ema.anneal_steps) == (0.999, 0.9999, 100000)
    assert (v1.train.lr, v1.train.max_steps, v1.method.head_layers) == (2e-4, 1_000_000, 2)
    v2 = load_recipe(root / "recipes/text/data2vec2-base.yaml")
    assert (v2.method.version, v2.method.clones, v2.method.top_k, v2.method.loss_scale) == (2, 8, 12, 1.0)
    assert (v2.mask.kind, v2.mask.prob) == ("random", 0.48)
    assert (v2.method.ema.decay, v2.method.ema.end_decay) == (0.9999, 0.99999)
    assert (v2.method.decoder.layers, v2.method.decoder.kernel, v2.method.decoder.groups) == (5, 9, 1)
    assert (v2.train.lr, v2.train.warmup_steps, v2.train.max_grad_norm) == (2e-4, 4000, 1.0)


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("method:\n  top_kk: 3\n")
    with pytest.raises(RecipeError, match=r"unknown key 'method.top_kk' \(did you mean 'top_k'\?\)"):
        load_recipe(p)


def test_wrong_types_name_the_key(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("encoder:\n  depth: twelve\n")
    with pytest.raises(RecipeError, match="encoder.depth: expected an integer"):
        load_recipe(p)
    p.write_text("mask:\n  kind: blocks\n")
    with pytest.raises(RecipeError, match="mask.kind: 'blocks' is not one of"):
        load_recipe(p)
    p.write_text("- a list\n")
    with pytest.raises(RecipeError, match="top level must be a mapping"):
        load_recipe(p)


def test_overrides_by_leaf_path_and_alias():
    r = load_recipe(None, ["--max_steps", "7", "--method.ema.decay", "0.5", "--data", "c/", "--lr=1e-3",
                           "--adapter.max_length", "64", "--betas", "[0.9, 0.95]"])
    assert r.train.max_steps == 7 and r.method.ema.decay == 0.5 and r.data.path == "c/"
    assert r.train.lr == 1e-3 and r.adapter["max_length"] == 64 and r.train.betas == (0.9, 0.95)
    assert load_recipe(None, ["--max_length", "48"]).adapter["max_length"] == 48


def test_override_errors():
    with pytest.raises(RecipeError, match="unknown override --max_stepz"):
        load_recipe(None, ["--max_stepz", "3"])
    with pytest.raises(RecipeError, match="ambiguous"):
        load_recipe(None, ["--eps", "0.2"])
    with pytest.raises(RecipeError, match="method.top_k .* > encoder.depth"):
        load_recipe(None, ["--top_k", "20"])
    with pytest.raises(RecipeError, match="adapter.max_len"):
        load_recipe(None, ["--adapter.max_len", "3"])
    with pytest.raises(RecipeError, match="no such file"):
        load_recipe("missing.yaml")
