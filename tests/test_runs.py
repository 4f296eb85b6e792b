"""Run folders over time: what --resume accepts of a changed recipe, and the layout version that run
folders and exports record (older ones are read, newer ones refused with a clear message)."""

import json
import shutil
from pathlib import Path

import pytest

from multissl.recipe import RecipeError, load_recipe
from multissl.runs import SCHEMA_VERSION, SchemaError
from multissl.train import load_run, pretrain

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "text" / "tiny-v2.yaml"


@pytest.fixture(scope="module")
def made(tmp_path_factory, kjv_file, tokenizer_dir) -> tuple[Path, list[str]]:
    """A finished 3-update run with checkpoint-3, and the overrides it was made with."""
    from tests.conftest import TINY

    run_dir = tmp_path_factory.mktemp("runs") / "run"
    args = [*TINY, "--data", str(kjv_file), "--tokenizer", str(tokenizer_dir), "--max_steps", "3",
            "--save_steps", "3"]
    pretrain(load_recipe(RECIPE, [*args, "--output_dir", str(run_dir)]))
    return run_dir, args


@pytest.fixture
def run_copy(made, tmp_path) -> tuple[Path, list[str]]:
    run_dir, args = made
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy, args


def resume(run_dir: Path, args: list[str], *extra: str) -> Path:
    return pretrain(load_recipe(RECIPE, [*args, "--output_dir", str(run_dir), *extra]), resume=True)


@pytest.mark.parametrize(("extra", "key"), [
    (["--batch_size", "2"], "train.batch_size=4, this recipe has 2"),
    (["--seed", "7"], "train.seed=1, this recipe has 7"),
    (["--grad_accum", "2"], "train.grad_accum=1, this recipe has 2"),
    (["--shuffle_buffer", "10"], "data.shuffle_buffer=1000, this recipe has 10"),
    (["--encoder.dim", "64"], "encoder.dim=32, this recipe has 64"),
])
def test_resume_refuses_what_the_checkpoint_cannot_continue(run_copy, extra, key):
    run_dir, args = run_copy
    with pytest.raises(RecipeError, match=rf"--resume: .*recipe.yaml was made with {key}"):
        resume(run_dir, args, *extra)


def test_resume_refuses_other_data(run_copy, tmp_path, kjv_rows):
    run_dir, args = run_copy
    other = tmp_path / "other.txt"
    other.write_text("\n".join(r["text"] for r in kjv_rows[:500]))
    with pytest.raises(RecipeError, match=r"data.path=.*this recipe has .*other.txt.* what the checkpoint's data"):
        resume(run_dir, [*args, "--data", str(other)])


def test_resume_takes_safe_changes_with_a_warning_and_a_moved_folder_silently(run_copy, caplog):
    """A longer run at another learning rate, from a copy of the run folder (another output_dir)."""
    run_dir, args = run_copy
    (run_dir / "model.safetensors").unlink()
    with caplog.at_level("WARNING"):
        resume(run_dir, args, "--max_steps", "4", "--lr", "5e-4")
    changed = [r.getMessage() for r in caplog.records if "changed settings" in r.getMessage()]
    assert len(changed) == 1 and changed[0].endswith("train.lr 0.001 -> 0.0005; train.max_steps 3 -> 4"), changed
    assert "output_dir" not in caplog.text
    assert [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()][-1] == 4


def test_run_folders_and_exports_record_their_schema_version(made, tmp_path):
    from multissl.export.hf import export

    run_dir, _ = made
    assert json.loads((run_dir / "run.json").read_text()) == {"schema_version": SCHEMA_VERSION}
    out = export(run_dir, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["multissl"] == {"schema_version": SCHEMA_VERSION}


def test_an_older_run_folder_loads_and_is_migrated_on_resume(run_copy):
    run_dir, args = run_copy
    (run_dir / "run.json").unlink()  # as multissl wrote run folders before versions were recorded
    load_run(run_dir)
    resume(run_dir, args)
    assert json.loads((run_dir / "run.json").read_text()) == {"schema_version": SCHEMA_VERSION}


def test_a_newer_run_folder_or_export_is_refused_clearly(run_copy, tmp_path, capsys):
    from multissl.cli import main
    from multissl.export.hf import export

    run_dir, args = run_copy
    newer = SCHEMA_VERSION + 1
    (run_dir / "run.json").write_text(json.dumps({"schema_version": newer}))
    message = (rf"{run_dir}: written by a newer multissl \(schema_version {newer}; "
               rf"this one reads up to {SCHEMA_VERSION}\)")
    with pytest.raises(SchemaError, match=message):
        load_run(run_dir)
    with pytest.raises(SchemaError, match=message):
        resume(run_dir, args)
    assert main(["export", str(run_dir), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "written by a newer multissl" in err

    (run_dir / "run.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION}))
    out = export(run_dir, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    config["multissl"]["schema_version"] = newer
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(SchemaError, match=rf"{out}: written by a newer multissl"):
        pretrain(load_recipe(RECIPE, [*args, "--init_from", str(out), "--output_dir", str(tmp_path / "cont")]))
