"""The vector index, search by example, the selection strategies, labels and the map, against naive
implementations of their definitions."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from multissl.cli import main
from multissl.curate.index import build_index, load_index
from multissl.curate.search import search
from multissl.curate.select import choose, kcenter_greedy, select, uncertainty_scores, unit
from multissl.curate.store import Embeddings, LabelStore
from multissl.errors import RecipeError


def blobs(n: int, dim: int, centres: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points around random centres (a mixture of Gaussians) and their centre."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim)).astype(np.float32)
    which = rng.integers(centres, size=n)
    return (c[which] + 0.35 * rng.normal(size=(n, dim))).astype(np.float32), which


def embeddings_folder(folder: Path, x: np.ndarray, labels=None, index: str = "flat") -> Path:
    """An embeddings folder holding the vectors ``x`` (as ``multissl embed`` writes it)."""
    from datasets import Dataset, Features, List, Value

    cols = {"id": [f"item{i}" for i in range(len(x))], "input": [f"text of item {i}" for i in range(len(x))]}
    feats = {"id": Value("string"), "input": Value("string")}
    if labels is not None:
        cols["label"] = [str(v) for v in labels]
        feats["label"] = Value("string")
    cols["embedding"] = x.tolist()
    feats["embedding"] = List(Value("float32"), length=x.shape[1])
    Dataset.from_dict(cols, features=Features(feats)).save_to_disk(str(folder))
    (folder / "embed.json").write_text(json.dumps({"modality": "text", "view": "text"}))
    build_index(folder, index)
    return folder


def test_flat_index_is_exact_and_approximate_ones_recall_most(tmp_path):
    x, _ = blobs(12_000, 16, 40)
    queries = x[:50]
    xn, qn = unit(x), unit(queries)
    exact = np.argsort(-(qn @ xn.T), axis=1, kind="stable")[:, :10]
    folder = embeddings_folder(tmp_path / "emb", x, index="flat")
    recalls = {}
    for kind in ("flat", "hnsw", "ivfpq"):
        info = build_index(folder, kind)
        assert info["kind"] == kind and info["vectors"] == 12_000
        _, found = load_index(folder, len(x), 16).search(queries, 10)
        recalls[kind] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])
    assert recalls["flat"] == 1.0
    assert recalls["hnsw"] >= 0.9 and recalls["ivfpq"] >= 0.9, recalls


def test_index_checks_and_errors(tmp_path):
    x, _ = blobs(200, 8, 4)
    a = embeddings_folder(tmp_path / "a", x)
    b = embeddings_folder(tmp_path / "b", x[:, :4])
    shutil.copy(a / "index.faiss", b / "index.faiss")
    with pytest.raises(RecipeError, match=r"b/index.faiss: holds 8-dimensional vectors, the embeddings have 4"):
        load_index(b, 200, 4)
    with pytest.raises(RecipeError, match="too few to train"):
        build_index(a, "ivfpq")
    assert json.loads((a / "index.json").read_text())["kind"] == "flat"  # auto: exact for small sets


def test_search_ranks_by_likeness_to_queries_minus_avoided(tmp_path, capsys):
    x, _ = blobs(300, 12, 6, seed=1)
    folder = embeddings_folder(tmp_path / "emb", x)
    hits = search(folder, ["item3", "item7"], avoid=["item11"], k=15)
    xn = unit(x)
    score = [(xn[i] @ xn[3] + xn[i] @ xn[7]) / 2 - xn[i] @ xn[11] for i in range(len(x))]  # the definition
    want = [f"item{i}" for i in sorted(range(len(x)), key=lambda i: -score[i]) if i not in (3, 7, 11)][:15]
    assert [h["id"] for h in hits] == want
    # the scores are cosine similarities to the combined direction: the same order
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:], strict=False))
    plain = search(folder, ["item3"], k=5)
    assert [h["id"] for h in plain] == [f"item{i}" for i in np.argsort(-(xn @ xn[3]))[1:6]]

    assert main(["search", str(folder), "--query", "item3", "--k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert main(["search", str(folder), "--query", "item3", "nothing.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("multissl: error: --query nothing.png: not an item of") and str(folder) in err
    assert main(["search", str(tmp_path), "--query", "item3"]) == 2
    assert "not an embeddings folder" in capsys.readouterr().err


def naive_kcenter(x: np.ndarray, budget: int, centres: list[int]) -> list[int]:
    """k-center greedy as Sener & Savarese state it: repeatedly add the point whose distance to its
    nearest centre is largest."""
    centres, chosen = list(centres), []
    for _ in range(budget):
        best, best_d = None, -1.0
        for i in range(len(x)):
            if i in centres:
                continue
            d = min(float(np.sqrt(((x[i] - x[c]) ** 2).sum())) for c in centres)
            if d > best_d:
                best, best_d = i, d
        centres.append(best)
        chosen.append(best)
    return chosen


def test_kcenter_greedy_matches_the_definition(tmp_path):
    x, _ = blobs(80, 5, 5, seed=2)
    got = kcenter_greedy(x, 12, np.array([4, 40]), np.random.default_rng(0)).tolist()
    assert got == naive_kcenter(x, 12, [4, 40])
    first = int(np.random.default_rng(7).integers(len(x)))  # no labels: a random first centre
    got = kcenter_greedy(x, 6, np.array([], dtype=np.int64), np.random.default_rng(7)).tolist()
    assert got == [first, *naive_kcenter(x, 5, [first])]


def test_strategies_leave_labelled_items_out_and_do_what_they_say(tmp_path):
    x, which = blobs(400, 6, 4, seed=3)
    labelled = {i: str(which[i]) for i in range(0, 400, 10)}
    for strategy in ("kcenter", "kmeans", "uncertainty", "random"):
        rows, _ = choose(unit(x), 20, strategy, labelled, seed=0)
        assert len(rows) == 20 == len(set(rows.tolist())), strategy
        assert not set(rows.tolist()) & set(labelled), strategy
    # k-means picks one item near each of 4 well-separated blobs
    rows, _ = choose(x, 4, "kmeans", {}, seed=0)
    assert sorted(which[rows].tolist()) == [0, 1, 2, 3]
    # uncertainty: the candidates whose two most probable classes are closest, from an independent fit
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    done = np.array(sorted(labelled))
    free = np.setdiff1d(np.arange(400), done)
    p = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0)).fit(
        x[done], which[done].astype(str)).predict_proba(x[free])
    margin = np.array([sorted(r)[-1] - sorted(r)[-2] for r in p])
    entropy = np.array([-sum(v * np.log(v) for v in r if v > 0) for r in p])
    rows, _ = choose(x, 10, "uncertainty", labelled, measure="margin")
    assert set(rows.tolist()) == set(free[np.argsort(margin)[:10]].tolist())
    rows, _ = choose(x, 10, "uncertainty", labelled, measure="entropy")
    assert set(rows.tolist()) == set(free[np.argsort(-entropy)[:10]].tolist())
    np.testing.assert_allclose(-uncertainty_scores(x, done, which[done].astype(str).tolist(), free), margin,
                               atol=1e-9)
    with pytest.raises(RecipeError, match="needs labels of at least 2 classes"):
        choose(x, 5, "uncertainty", {0: "a"})


def test_select_and_labels_round_trip(tmp_path, capsys):
    x, which = blobs(150, 6, 3, seed=4)
    folder = embeddings_folder(tmp_path / "emb", x, labels=which)
    store = LabelStore(Embeddings(folder))
    for i in range(0, 30, 3):
        store.set(f"item{i}", f"class{which[i]}")
    store.set("item0", "")  # removed again
    assert main(["select", str(folder), "--budget", "15", "--strategy", "uncertainty"]) == 0
    with open(folder / "next.csv") as fh:
        picked = [r["id"] for r in csv.DictReader(fh)]
    assert len(picked) == 15 and not set(picked) & set(store.labels)
    more = tmp_path / "more.csv"
    more.write_text("id,label\nitem1,x\nitem2,y\n")
    out = select(folder, 150, "random", labels=more, out=tmp_path / "all.csv")
    assert len(out) == 150 - 9 - 2  # every item not labelled on the page nor in --labels
    # labels.csv survives a reload; exports read back
    again = LabelStore(Embeddings(folder)).labels
    assert again == store.labels and len(again) == 9
    from multissl.probe import read_labelled

    csv_out = store.export(tmp_path / "labels.csv")
    df = read_labelled(csv_out, "input", "label")
    assert sorted(df["label"]) == sorted(again.values()) and df["input"].iloc[0].startswith("text of item")
    from datasets import load_from_disk

    ds = load_from_disk(str(store.export(tmp_path / "labels-ds")))
    assert ds.num_rows == 9 and ds.features["label"].names == sorted(set(again.values()))
    with pytest.raises(KeyError, match="label: item999: not an item of"):
        store.set("item999", "a")


def test_map_is_a_png_coloured_by_label(tmp_path):
    from PIL import Image

    from multissl.curate.atlas import draw_map

    x, which = blobs(120, 8, 3, seed=5)
    folder = embeddings_folder(tmp_path / "emb", x, labels=which)
    path = draw_map(folder)
    assert path == folder / "map.png"
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 300
