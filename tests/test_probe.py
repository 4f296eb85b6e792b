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
    kinds = ["last layer", "20-NN", "20-NN T=0.07", "layer-weighted", "linear 1%", "linear 10%"]  # the default
    assert names == [*(("pretrained", k) for k in kinds), *(("random init", k) for k in kinds), ("majority class", "-")]
    n = len(kjv_rows[::40])
    assert all(r["n"] == n and r["seeds"] == 2 for r in results)
    for r in results:  # the standard error of an accuracy over n rows
        assert r["se"] == pytest.approx((r["accuracy"] * (1 - r["accuracy"]) / n) ** 0.5, rel=0.05)
    gains = [r for r in results if "gain" in r]
    assert [r["features"] for r in gains] == kinds
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


def _dino_votes_by_hand(train_x, train_y, x, k, temperature):
    """DINO's weighted k-NN written out: cosine similarity to every training row, the k largest,
    each adds exp(sim / T) to its class; the class with the most wins."""
    import math

    def unit(v):
        n = math.sqrt(sum(a * a for a in v))
        return [a / n for a in v]

    q = unit(x)
    sims = sorted(((sum(a * b for a, b in zip(q, unit(row), strict=True)), label)
                   for row, label in zip(train_x.tolist(), train_y.tolist(), strict=True)), reverse=True)
    votes: dict = {}
    for sim, label in sims[:k]:
        votes[label] = votes.get(label, 0.0) + math.exp(sim / temperature)
    return max(sorted(votes), key=lambda c: votes[c])


def test_weighted_knn_is_dinos_vote():
    import numpy as np

    from multissl.classifiers import knn_predict

    # one query; its 3 nearest rows: one of class "a" at cosine 0.99, two of class "b" at 0.6; class "c"
    # opposite. Summed similarities give "b" (0.99 < 1.2); DINO's exp(sim / 0.07) gives "a"
    # (e^14.1 > 2 e^8.6); at T = 1 the two "b" rows win again (e^0.99 < 2 e^0.6)
    angle = np.arccos([0.99, 0.6, 0.6])
    train = np.c_[np.cos(angle), np.sin(angle) * [1, 1, -1]]
    train = np.r_[train, -np.ones((4, 2))] * 3.0  # lengths do not matter: cosine
    labels = np.array(["a", "b", "b", "c", "c", "c", "c"])
    query = np.array([[2.0, 0.0]])
    assert knn_predict(train, labels, query, k=3).tolist() == ["b"]
    assert knn_predict(train, labels, query, k=3, temperature=0.07).tolist() == ["a"]
    assert knn_predict(train, labels, query, k=3, temperature=1.0).tolist() == ["b"]
    # against the vote written out, on random features with 4 classes
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(60, 8)), rng.normal(size=(25, 8))
    labels = rng.integers(0, 4, 60)
    for k, t in ((5, 0.07), (20, 0.07), (20, 0.5)):
        expected = [_dino_votes_by_hand(train, labels, q, k, t) for q in test.tolist()]
        assert knn_predict(train, labels, test, k=k, temperature=t).tolist() == expected


def test_low_shot_takes_a_stratified_share_of_each_class():
    import numpy as np

    from multissl.classifiers import LowShot, linear_predict, low_shot_rows

    labels = np.repeat(["a", "b", "c"], [3, 50, 200])
    for fraction, per_class in ((0.01, {"a": 1, "b": 1, "c": 2}), (0.1, {"a": 1, "b": 5, "c": 20})):
        rows = low_shot_rows(labels, fraction, seed=1)
        assert len(set(rows.tolist())) == len(rows)
        assert dict(zip(*np.unique(labels[rows], return_counts=True), strict=True)) == per_class
    assert low_shot_rows(labels, 0.1, 1).tolist() == low_shot_rows(labels, 0.1, 1).tolist()
    assert low_shot_rows(labels, 0.1, 1).tolist() != low_shot_rows(labels, 0.1, 2).tolist()
    # the classifier is trained on those rows only, and predicts every test row
    seen = LowShot(lambda a, b, c, s: np.full(len(c), len(a)), 0.1)(np.zeros((253, 1)), labels, np.zeros((7, 1)), 1)
    assert seen.tolist() == [26] * 7
    # separable classes: one labelled row per class is enough for the linear probe
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = np.eye(3)[y] * 10 + rng.normal(0, 0.1, (300, 3))
    assert (LowShot(linear_predict, 0.01)(x[:200], y[:200], x[200:], 0) == y[200:]).all()


def test_protocol_and_setting_errors_name_the_option(tmp_path, capsys):
    from multissl.protocols import FineTuneConfig, parse_protocols

    assert parse_protocols("finetune, knn") == ("knn", "finetune")
    cases = [({"protocols": "knn,svm"}, "--protocols svm: unknown protocol; known: linear, knn, layers, lowshot"),
             ({"protocols": ""}, "--protocols: empty"), ({"temperature": 0.0}, "--temperature 0.0"),
             ({"label_fractions": (0.1, 1.5)}, "--label-fractions 1.5"),
             ({"finetune": FineTuneConfig(epochs=0)}, "--finetune-epochs 0"),
             ({"finetune": FineTuneConfig(lr=-1.0)}, "--finetune-lr -1.0")]
    for kwargs, message in cases:  # checked before anything is read
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            probe(tmp_path / "none", tmp_path / "none.csv", label_column="label", **kwargs)
    # the command line's own parsing of the shares, and its options reach the same checks
    from multissl.cli import main

    for option, value, message in (("--label-fractions", "0.01,ten", "--label-fractions 0.01,ten: expected numbers"),
                                   ("--protocols", "knn,svm", "--protocols svm: unknown protocol"),
                                   ("--finetune-epochs", "0", "--finetune-epochs 0")):
        assert main(["probe", str(tmp_path / "none"), "--data", str(tmp_path / "none.csv"), "--label-column", "label",
                     option, value]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err


def test_fine_tuning_learns_plain_from_inverted_digits(tmp_path, image_dirs):
    """Real digits and the same digits inverted: brightness tells them apart, so a ViT fine-tuned under
    ViTForImageClassification's head gets nearly all held-out rows right."""
    import csv

    import numpy as np
    from PIL import Image, ImageOps
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    from multissl.classifiers import cross_val_predict, folds_of
    from multissl.finetune import FineTuner, classifier_class, classifier_loader
    from multissl.modalities.vision import Vision
    from multissl.protocols import FineTuneConfig

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64), add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    processor.save_pretrained(tmp_path / "vit")
    paths, labels = [], []
    for i, row in enumerate(list(csv.DictReader(open(image_dirs[1])))[:60]):
        img = Image.open(image_dirs[1].parent / row["path"])
        kind = ("plain", "inverted")[i % 2]
        (img if kind == "plain" else ImageOps.invert(img)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
        labels.append(kind)
    labels = np.array(labels)
    assert classifier_class("vit").__name__ == "AutoModelForImageClassification"
    assert classifier_class("data2vec-audio").__name__ == "AutoModelForAudioClassification"
    assert classifier_class("data2vec-text").__name__ == "AutoModelForSequenceClassification"

    rows, split = np.arange(60)[:, None], folds_of(labels, 2, 0)
    tuned = FineTuner(classifier_loader(tmp_path / "vit"), Vision.model_inputs, processor, paths,
                      FineTuneConfig(epochs=8, lr=2e-3, batch_size=10))
    first = cross_val_predict(tuned, rows, labels, split, 0)
    assert (first == labels).mean() >= 0.95
    assert (cross_val_predict(tuned, rows, labels, split, 0) == first).all()  # seeded
    # the names the other way round: a model that did not learn from the labels (its untrained head
    # might split bright from dark by chance) would be right in at most one of the two
    swapped = np.where(labels == "plain", "inverted", "plain")
    assert (cross_val_predict(tuned, rows, swapped, split, 0) == swapped).mean() >= 0.95
    # the random-init loader draws every weight afresh; the other keeps the export's encoder
    kept, fresh = classifier_loader(tmp_path / "vit")(2), classifier_loader(tmp_path / "vit", random_init=True)(2)
    export_weight = ViTModel.from_pretrained(tmp_path / "vit").embeddings.patch_embeddings.projection.weight
    assert torch.equal(kept.vit.embeddings.patch_embeddings.projection.weight, export_weight)
    assert not torch.equal(fresh.vit.embeddings.patch_embeddings.projection.weight, export_weight)
    assert kept.classifier.out_features == 2


def test_every_protocol_on_a_tiny_image_export(tmp_path, image_dirs):
    from multissl.protocols import FineTuneConfig
    from tests.conftest import TINY_VISION

    r = load_recipe("recipes/vision/tiny.yaml", [*TINY_VISION, "--data", str(image_dirs[0]), "--output_dir",
                                                 str(tmp_path / "run"), "--max_steps", "2"])
    out = export(pretrain(r), tmp_path / "out")
    n = 150
    results = probe(out, image_dirs[1], label_column="label", input_column="path", folds=3, max_samples=n,
                    protocols="finetune,lowshot,knn,linear", finetune=FineTuneConfig(epochs=1, batch_size=25))
    kinds = ["last layer", "20-NN", "20-NN T=0.07", "linear 1%", "linear 10%", "fine-tuned"]
    assert [(x["model"], x["features"]) for x in results] == [
        *(("pretrained", k) for k in kinds), *(("random init", k) for k in kinds), ("majority class", "-")]
    for x in results:
        assert x["n"] == n and 0 <= x["accuracy"] <= 1
        assert x["se"] == pytest.approx((x["accuracy"] * (1 - x["accuracy"]) / n) ** 0.5)
    for x in results[:len(kinds)]:  # paired on the same folds: the gain is the difference of the accuracies
        assert x["gain"] == pytest.approx(x["accuracy"] - accuracy(results, "random init", x["features"]))
    linear = next(x for x in results if x["features"] == "last layer")  # ten digits, far apart even barely trained
    assert linear["accuracy"] > accuracy(results, "majority class") + 3 * linear["se"]
    table = format_table(results)
    assert "fine-tuned" in table and "20-NN T=0.07" in table
