import json

import pytest

from multissl.config import load_recipe
from multissl.export.hf import export
from multissl.probe import accuracy, format_table, probe, read_table
from multissl.train import pretrain
from tests.conftest import TINY


def test_probe_reports_pretrained_random_and_majority(tmp_path, kjv_rows, kjv_file, tokenizer_dir):
    recipe = load_recipe("recipes/text/tiny.yaml", [*TINY, "--data", str(kjv_file), "--tokenizer",
                                                    str(tokenizer_dir), "--output_dir", str(tmp_path / "r"),
                                                    "--max_steps", "2"])
    out = export(pretrain(recipe), tmp_path / "m")
    data = tmp_path / "labelled.jsonl"
    with open(data, "w") as fh:
        for r in kjv_rows[::40]:
            fh.write(json.dumps({"text": r["text"], "label": r["testament"]}) + "\n")
    results = probe(out, data, label_column="label", test_size=0.3, seed=0)
    names = [(r["model"], r["features"]) for r in results]
    assert names == [("pretrained", "last layer"), ("pretrained", "20-NN"), ("pretrained", "layer-weighted"),
                     ("random init", "last layer"), ("random init", "20-NN"), ("random init", "layer-weighted"),
                     ("majority class", "-")]
    n = len(kjv_rows[::40])
    assert all(r["n_train"] + r["n_test"] == n for r in results)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results)
    assert accuracy(results, "majority class") == pytest.approx(0.75, abs=0.05)  # OT is about 3/4 of the Bible
    assert accuracy(results, "pretrained") != accuracy(results, "random init")  # two feature sets were probed
    assert all(0 <= r["top_layer"] <= 3 for r in results if r["features"] == "layer-weighted")
    assert "pretrained" in format_table(results)


def test_probe_input_errors(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "a", "y": 1}\n')
    with pytest.raises(KeyError, match="no column 'label'"):
        read_table(p, ["text", "label"])
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "nope.jsonl", ["text"])
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="expected .jsonl"):
        read_table(tmp_path / "x.xml", ["text"])
