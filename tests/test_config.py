import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import yaml

from multissl.recipe import RecipeError, keys_help, load_recipe, recipe_info, shipped_recipes

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


def test_recipes_by_name_path_or_link(tmp_path):
    root = Path(__file__).resolve().parents[1]
    by_path = load_recipe(root / "multissl" / "recipes" / "text" / "tiny.yaml").to_dict()
    for name in ("text/tiny", "text/tiny.yaml", "recipes/text/tiny.yaml", root / "recipes" / "text" / "tiny.yaml"):
        assert load_recipe(name).to_dict() == by_path
    assert shipped_recipes() == sorted(str(p.relative_to(root / "recipes").with_suffix(""))
                                       for p in (root / "recipes").glob("*/*.yaml"))
    with pytest.raises(RecipeError, match=r"^recipe text/tinny: no such file.*did you mean text/tiny") as e:
        load_recipe("text/tinny")
    assert "\n" not in str(e.value)
    own = tmp_path / "text" / "tiny.yaml"  # a file of that path wins over the shipped recipe
    own.parent.mkdir()
    own.write_text("modality: text\ntrain: {max_steps: 3}\n")
    assert load_recipe(own).train.max_steps == 3


def test_python_values_set_the_keys_the_command_line_does():
    tokens = ["--method.ema.decay", "0.5", "--max_steps", "7", "--data", "c", "--lr", "1e-3", "--report_to", "none",
              "--betas", "[0.9, 0.95]"]
    values = {"method.ema.decay": 0.5, "max_steps": 7, "data": Path("c"), "lr": 1e-3, "report_to": ["none"],
              "betas": (0.9, 0.95)}
    assert load_recipe("text/tiny", values=values).to_dict() == load_recipe("text/tiny", tokens).to_dict()
    import multissl

    api = multissl.load_recipe("text/tiny", method__ema__decay=0.5, max_steps=7, data="c", lr=1e-3,
                               report_to="none", betas=[0.9, 0.95])
    assert api.to_dict() == load_recipe("text/tiny", tokens).to_dict()
    assert multissl.load_recipe("text/mlm-tiny", method__name="mlm").method.name == "mlm"
    again = multissl.load_recipe(api, max_steps=3)  # a Recipe object takes overrides too
    assert again.train.max_steps == 3 and again.method.ema.decay == 0.5 and api.train.max_steps == 7
    with pytest.raises(RecipeError, match=r"recipe /no/such.yaml: no such file.*multissl recipes lists"):
        multissl.load_recipe("/no/such.yaml")
    with pytest.raises(RecipeError, match=r"unknown override --max_stepz \(did you mean --max_steps\?\)"):
        multissl.load_recipe("text/tiny", max_stepz=3)
    with pytest.raises(RecipeError, match="train.max_steps: expected an integer, got 'many'"):
        multissl.load_recipe("text/tiny", max_steps="many")


def test_fixed_length_tuples_are_checked():
    with pytest.raises(RecipeError, match=r"adapter.mean: expected 3 values, got 2"):
        load_recipe("vision/tiny", ["--mean", "[0.5, 0.5]"])
    assert load_recipe("vision/tiny", ["--mean", "[0.5, 0.5, 0.5]"]).adapter_config().mean == (0.5, 0.5, 0.5)


def test_recipe_list_reads_each_file():
    for name in shipped_recipes():
        info = recipe_info(name)
        text = info.path.read_text()
        raw = yaml.safe_load(text)
        method = raw.get("method") or {}
        assert info.modality == name.split("/")[0] == raw["modality"]
        assert info.method.split()[0] == method.get("name", "data2vec")
        assert info.description and "\n" not in info.description and text.startswith("#")
    assert recipe_info("text/tiny").description == ("A data2vec text encoder that learns something in a few "
                                                    "minutes on a 2-core CPU")
    assert recipe_info("text/tiny").method == "data2vec v1" and recipe_info("vision/tiny").method == "data2vec v2"


def _leaves(obj, prefix):
    """(dotted key, value, class, field name) of every leaf of a config, walked here independently."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, type(obj), f.name


@pytest.mark.parametrize("name", ["vision/tiny", "text/mlm-tiny", "audio/bestrq-tiny", "vision/mae-tiny"])
def test_keys_help_shows_every_key_with_type_value_and_docstring(name):
    recipe = load_recipe(name, ["--max_steps", "17"])
    text = keys_help(recipe, name)
    lines = text.splitlines()
    sections = {"encoder": recipe.encoder, "adapter": recipe.adapter_config(), "method": recipe.method,
                "mask": recipe.mask, "health": recipe.health, "data": recipe.data, "train": recipe.train}
    shown = [line for line in lines if line.startswith("  --")]
    expected = [leaf for key, section in sections.items() for leaf in _leaves(section, f"{key}.")]
    assert len(shown) == len(expected) + 2 + 3  # + modality, init_from, the card's three keys
    for key, value, cls, field_name in expected:
        [i] = [i for i, line in enumerate(lines) if re.match(rf"  --{re.escape(key)}[ ,]", line)]
        assert yaml.safe_load(lines[i].split(" = ", 1)[1]) == (list(value) if isinstance(value, tuple) else value)
        # the docstring: the string literal under the field in its class's source, read here with a regex
        doc = re.search(rf"\n    {field_name}: [^\n]*\n    \"\"\"(.*?)\"\"\"", inspect.getsource(cls), re.S).group(1)
        first = " ".join(lines[i + 1].split())
        assert lines[i + 1].startswith("      ") and " ".join(doc.split()).startswith(first), key
    assert f"adapter ({type(sections['adapter']).__name__})" in text
    assert "  --train.max_steps, --max_steps  int = 17" in text
