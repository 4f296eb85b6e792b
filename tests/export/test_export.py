import pytest
import torch
import yaml
from transformers import AutoModel, AutoTokenizer, Data2VecTextModel, RobertaModel

from multissl.export.hf import ParityError, check_parity, export
from multissl.recipe import load_recipe
from multissl.train import load_run, pretrain


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, kjv_file, tokenizer_dir):
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("exp") / "run"
    recipe = load_recipe("recipes/text/tiny.yaml", [*TINY, "--data", str(kjv_file), "--tokenizer",
                                                    str(tokenizer_dir), "--output_dir", str(out), "--max_steps", "4",
                                                    "--card.datasets", "kjv"])
    return pretrain(recipe)


@pytest.mark.parametrize("which,arch,cls", [("student", None, Data2VecTextModel), ("teacher", "roberta", RobertaModel)])
def test_export_loads_with_automodel_and_matches_on_real_text(run_dir, tmp_path, kjv_rows, which, arch, cls):
    out = export(run_dir, tmp_path / "out", which=which, arch=arch)
    model = AutoModel.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model) is cls
    _, _, encoder = load_run(run_dir, which)
    texts = [r["text"] for r in kjv_rows[5000:5016]]
    batch = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # padding is exercised
    with torch.no_grad():
        ref = model(**batch, output_hidden_states=True).hidden_states
        ours, _ = encoder({"input_ids": batch["input_ids"]})
    valid = batch["attention_mask"].bool()
    diff = max(float((a - b)[valid].abs().max()) for a, b in zip(ours, ref, strict=True))
    assert diff <= 1e-5
    assert not list(tmp_path.glob(".tmp-*"))  # nothing half-written left behind


def test_export_card_and_existing_folder(run_dir, tmp_path):
    out = export(run_dir, tmp_path / "m")
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "transformers" and meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["kjv"] and "data2vec" in meta["tags"]
    assert "target_var" in card and "pred_var" in card and "top_k: 2" in card
    assert str(run_dir) not in card  # no local paths
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        export(run_dir, out)
    export(run_dir, out, overwrite=True)


def test_parity_check_catches_a_wrong_export(run_dir, tmp_path):
    out = export(run_dir, tmp_path / "m")
    model = AutoModel.from_pretrained(out)
    with torch.no_grad():
        model.encoder.layer[0].intermediate.dense.weight.mul_(1.01)
    recipe, modality, encoder = load_run(run_dir)
    with pytest.raises(ParityError, match="differs"):
        check_parity(encoder, model, modality, AutoTokenizer.from_pretrained(out), atol=1e-5)


def test_export_needs_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a multissl run folder"):
        export(tmp_path, tmp_path / "o")
