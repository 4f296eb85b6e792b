import json

import pytest

from multissl.export.hf import export
from multissl.probe import accuracy, format_table, probe, read_table
from multissl.recipe import load_recipe
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
    results = probe(out, data, label_column="label", folds=3, seed=0, seeds=2)
    names = [(r["model"], r["features"]) for r in results]
    assert names == [("pretrained", "last layer"), ("pretrained", "20-NN"), ("pretrained", "layer-weighted"),
                     ("random init", "last layer"), ("random init", "20-NN"), ("random init", "layer-weighted"),
                     ("majority class", "-")]
    n = len(kjv_rows[::40])
    assert all(r["n"] == n and r["seeds"] == 2 for r in results)
    for r in results:  # the standard error of an accuracy over n rows
        assert r["se"] == pytest.approx((r["accuracy"] * (1 - r["accuracy"]) / n) ** 0.5, rel=0.05)
    gains = [r for r in results if "gain" in r]
    assert [r["features"] for r in gains] == ["last layer", "20-NN", "layer-weighted"]
    for r in gains:  # the gain is the pretrained accuracy minus random init's, on the same folds
        rnd = accuracy(results, "random init", r["features"])
        assert r["gain"] == pytest.approx(r["accuracy"] - rnd, abs=1e-9) and r["gain_se"] > 0
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results)
    assert accuracy(results, "majority class") == pytest.approx(0.75, abs=0.05)  # OT is about 3/4 of the Bible
    assert accuracy(results, "pretrained") != accuracy(results, "random init")  # two feature sets were probed
    assert all(0 <= r["top_layer"] <= 3 for r in results if r["features"] == "layer-weighted")
    table = format_table(results)
    assert "pretrained" in table and "mean ± sd over 2 seeds" in table


def test_standard_errors_on_cases_with_a_known_answer():
    import numpy as np

    from multissl.classifiers import accuracy_se, cross_val_predict, folds_of, linear_predict, paired_gain

    rng = np.random.default_rng(0)
    # 2,000 rows, two classes; a feature that gives away the label for a known 70% of rows, noise for
    # the rest: a linear probe is right on the 70% and on half of the others, 85% in all
    y = rng.integers(0, 2, 2000)
    known = rng.random(2000) < 0.7
    x = np.where(known, y * 2.0 - 1.0, 0.0)[:, None] + np.c_[rng.normal(0, 1e-3, 2000)]
    correct = cross_val_predict(linear_predict, x, y, folds_of(y, 5, 0)) == y
    acc, se = accuracy_se(correct)
    assert abs(acc - 0.85) < 3 * (0.85 * 0.15 / 2000) ** 0.5
    assert se == pytest.approx((acc * (1 - acc) / 2000) ** 0.5)
    # a paired gain: the same rows right, plus 100 more; every difference is 0 or 1
    base = correct.copy()
    better = correct.copy()
    better[np.flatnonzero(~correct)[:100]] = True
    gain, gain_se = paired_gain(better, base)
    p = 100 / 2000
    assert gain == pytest.approx(p) and gain_se == pytest.approx((p * (1 - p) / 1999) ** 0.5)


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
