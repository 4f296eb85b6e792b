import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from multissl.recipe import RecipeError, load_recipe
from multissl.train import CollapseError, pretrain
from tests.conftest import for_method
from tests.run_driver import StopAt

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "text" / "tiny-v2.yaml"


def run(args, *extra, callbacks=None, resume=False, overwrite=False):
    return pretrain(load_recipe(TINY, [*args, *extra]), resume=resume, overwrite=overwrite, callbacks=callbacks)


def test_pretrain_writes_run_folder_and_logs(tiny_args):
    run_dir = run(tiny_args, "--max_steps", "4")
    for name in ("model.safetensors", "recipe.yaml", "metrics.jsonl", "metrics.csv", "preprocessor"):
        assert (run_dir / name).exists(), name
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert not (run_dir / ".staging").exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["target_var"] > 0 and r["pred_var"] > 0 and 0.99 < r["ema_decay"] < 1 for r in rows)
    state = load_file(str(run_dir / "model.safetensors"))
    assert int(state["ema_updates"]) == 4


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tiny_args, tmp_path):
    full = run(tiny_args, "--max_steps", "6", "--output_dir", str(tmp_path / "full"))
    part = tmp_path / "part"
    run(tiny_args, "--max_steps", "6", "--output_dir", str(part), callbacks=[StopAt(3)])
    assert (part / "checkpoint-3").is_dir() and not (part / "checkpoint-6").exists()
    run(tiny_args, "--max_steps", "6", "--output_dir", str(part), resume=True)
    steps = [json.loads(line)["step"] for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]  # the second run continued from step 3, it did not start over
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert diff <= 1e-6
    assert int(b["ema_updates"]) == 6


def test_only_the_newest_checkpoints_are_kept(tiny_args):
    run_dir = run(tiny_args, "--max_steps", "5", "--save_steps", "1", "--save_total_limit", "2")
    assert sorted(p.name for p in run_dir.iterdir() if "checkpoint" in p.name) == ["checkpoint-4", "checkpoint-5"]


def test_ema_steps_once_per_optimiser_update(tiny_args):
    run_dir = run(tiny_args, "--max_steps", "3", "--grad_accum", "2")
    assert int(load_file(str(run_dir / "model.safetensors"))["ema_updates"]) == 3


def test_health_collapse_stops_with_checkpoint(tiny_args, caplog):
    with pytest.raises(CollapseError, match="target_var .* < min_target_var 100.0 at step 2"):
        run(tiny_args, "--max_steps", "6", "--health.min_target_var", "100", "--health.action", "stop")
    run_dir = Path(tiny_args[tiny_args.index("--output_dir") + 1])
    assert (run_dir / "checkpoint-2" / "model.safetensors").exists()
    with caplog.at_level("WARNING"):
        run(tiny_args, "--max_steps", "2", "--health.min_pred_var", "100", "--health.action", "warn",
            overwrite=True)
    assert "pred_var" in caplog.text and "collapsed" in caplog.text


def test_bad_runs_fail_with_one_line_errors(tiny_args, tmp_path):
    run(tiny_args, "--max_steps", "3")
    with pytest.raises(RecipeError, match="exists and is not empty"):
        run(tiny_args, "--max_steps", "3")
    with pytest.raises(RecipeError, match="made with encoder.depth=3, this recipe has 2"):
        run(tiny_args, "--max_steps", "6", "--encoder.depth", "2", resume=True)
    with pytest.raises(RecipeError, match="no checkpoint"):
        run(tiny_args, "--output_dir", str(tmp_path / "fresh"), resume=True)
    with pytest.raises(RecipeError, match="no tokenizer there"):
        run(tiny_args, "--tokenizer", str(tmp_path), "--output_dir", str(tmp_path / "x"))


def test_v1_recipe_and_continued_pretraining_from_bert(tiny_args, tmp_path, tokenizer_dir):
    from transformers import BertConfig, BertModel

    run_dir = run(tiny_args, "--max_steps", "2", "--version", "1", "--mask.kind", "bert", "--mask.prob", "0.15",
                  "--head_layers", "2", "--loss_beta", "4")
    assert (run_dir / "model.safetensors").exists()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=40, pad_token_id=tok.pad_token_id))
    bert.save_pretrained(tmp_path / "bert")
    run_dir = run(tiny_args, "--max_steps", "2", "--init_from", str(tmp_path / "bert"),
                  "--output_dir", str(tmp_path / "cont"))
    saved = load_file(str(run_dir / "model.safetensors"))
    assert saved["encoder.local.embed_tokens.weight"].shape == (len(tok), 32)


def test_streaming_run(tiny_args):
    run_dir = run(tiny_args, "--max_steps", "3", "--streaming", "true")
    assert int(load_file(str(run_dir / "model.safetensors"))["ema_updates"]) == 3


def test_empty_corpus_is_a_one_line_error(tiny_args, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(RecipeError, match="every file is empty"):
        run(tiny_args, "--data", str(empty), "--output_dir", str(tmp_path / "e"))


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes" / "text").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_text_recipe_runs_on_a_tiny_model(recipe, tiny_args, kjv_table):
    """Each recipe's objective, masking and schedule, shrunk to a tiny encoder for two updates; the
    recipes that train on labels read a table with a label column."""
    labels = ["--data", str(kjv_table), "--label-column", "section"] if "label_column" in recipe.read_text() else []
    r = load_recipe(recipe, [*for_method(tiny_args, recipe), *labels, "--max_steps", "2", "--warmup_steps", "1",
                             "--decay_steps", "1"])
    run_dir = pretrain(r)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)


def test_ema_schedule_by_run_length_follows_the_step_and_resumes_exactly(tiny_args, tmp_path):
    """anneal_fraction anneals over that share of max_steps; the decay's position is the optimiser step,
    as the learning rate's, also across a resume and a skipped update."""
    from multissl.core.ema import EMAConfig, annealed_decay
    from tests.run_driver import Poison

    ema = ["--ema.decay", "0.5", "--ema.end_decay", "0.9", "--ema.anneal_fraction", "0.5", "--logging_steps", "1"]
    cfg = EMAConfig(decay=0.5, end_decay=0.9, anneal_fraction=0.5)
    expected = [annealed_decay(step, cfg, 8) for step in range(8)]
    assert expected[:4] == pytest.approx([0.5, 0.6, 0.7, 0.8]) and expected[4:] == [0.9] * 4

    full = run(tiny_args, "--max_steps", "8", *ema, "--output_dir", str(tmp_path / "full"))
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["ema_decay"] for r in rows] == pytest.approx(expected)
    share = load_file(str(full / "model.safetensors"))["teacher_init_share"]
    assert float(share) == pytest.approx(float(torch.tensor(expected, dtype=torch.float64).prod()))
    assert [r["teacher_init_share"] for r in rows][-1] == pytest.approx(float(share), abs=1e-5)

    part = tmp_path / "part"
    run(tiny_args, "--max_steps", "8", *ema, "--output_dir", str(part), callbacks=[StopAt(3)])
    run(tiny_args, "--max_steps", "8", *ema, "--output_dir", str(part), resume=True)
    resumed = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["ema_decay"] for r in resumed] == pytest.approx(expected)
    assert float(load_file(str(part / "model.safetensors"))["teacher_init_share"]) == pytest.approx(float(share))

    # a skipped update (NaN at step 3) moves no weights, and the schedule stays with the step count
    skipped = run(tiny_args, "--max_steps", "8", *ema, "--output_dir", str(tmp_path / "skip"),
                  callbacks=[Poison({3})])
    rows = [json.loads(line) for line in (skipped / "metrics.jsonl").read_text().splitlines()]
    assert [r["ema_decay"] for r in rows][3:] == pytest.approx(expected[3:])
    lrs = [r["learning_rate"] for r in rows]
    assert lrs == pytest.approx([r["learning_rate"] for r in
                                 (json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines())])
    state = load_file(str(skipped / "model.safetensors"))
    assert int(state["ema_updates"]) == 7
    assert float(state["teacher_init_share"]) == pytest.approx(
        float(torch.tensor(expected[:2] + expected[3:], dtype=torch.float64).prod()))


def test_a_slow_teacher_is_named_at_the_end(tiny_args, caplog):
    with caplog.at_level("WARNING"):
        run(tiny_args, "--max_steps", "3", "--ema.decay", "0.999", "--ema.end_decay", "0.999")
    assert "of the teacher is still its initial value after 3 steps" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # the cap speeds the same schedule up to leave 5%
        run_dir = run(tiny_args, "--max_steps", "3", "--ema.decay", "0.999", "--ema.end_decay", "0.999",
                      "--ema.max_init_share", "0.05", "--output_dir", str(Path(tiny_args[-1]).parent / "capped"))
    assert "initial value" not in caplog.text
    assert float(load_file(str(run_dir / "model.safetensors"))["teacher_init_share"]) == pytest.approx(0.05, rel=1e-5)
