import subprocess
import sys

import pytest

from multissl.cli import main


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["pretrain", "recipes/text/tiny.yaml", "--max_stepz", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown override --max_stepz" in err and "max_steps" in err
    assert main(["pretrain", "recipes/text/tiny.yaml", "--output_dir", str(tmp_path / "r")]) == 2
    assert "data.tokenizer is empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path), str(tmp_path / "o")]) == 2
    assert "not a multissl run folder" in capsys.readouterr().err


def test_full_cli_path(tmp_path, kjv_file, tokenizer_dir, kjv_rows, capsys):
    from tests.conftest import TINY

    tok = tmp_path / "tok"
    assert main(["tokenizer", "train", "--files", str(kjv_file), "--kind", "wordpiece", "--vocab-size", "500",
                 "--out", str(tok)]) == 0
    run = tmp_path / "run"
    assert main(["pretrain", "recipes/text/tiny.yaml", *TINY, "--data", str(kjv_file), "--tokenizer", str(tok),
                 "--output_dir", str(run), "--max_steps", "2"]) == 0
    assert main(["export", str(run), str(tmp_path / "out")]) == 0
    data = tmp_path / "l.jsonl"
    data.write_text("".join(f'{{"text": "{r["text"]}", "t": "{r["testament"]}"}}\n' for r in kjv_rows[::100]))
    capsys.readouterr()
    assert main(["probe", str(tmp_path / "out"), "--data", str(data), "--label-column", "t"]) == 0
    assert "random init" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--help"], ["pretrain", "--help"]])
def test_module_entry_point(args):
    out = subprocess.run([sys.executable, "-m", "multissl", *args], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: multissl" in out.stdout


def test_audio_cli_scan_strict_pretrain_export_probe(tmp_path, speech_dir, digits_labels, capsys):
    import shutil

    from tests.conftest import TINY_AUDIO

    corpus = tmp_path / "corpus"
    shutil.copytree(speech_dir, corpus)
    (corpus / "broken.flac").write_bytes(b"fLaC" + bytes(100))
    assert main(["audio", "scan", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert "usable files: 40   skipped: 1" in out and "broken.flac: unreadable" in out and "22050 Hz x40" in out

    args = ["pretrain", "recipes/audio/tiny.yaml", *TINY_AUDIO, "--data", str(corpus), "--max_steps", "2"]
    assert main([*args, "--output_dir", str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "broken.flac" in err and "data.strict" in err
    assert main([*args, "--output_dir", str(tmp_path / "run")]) == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    assert main(["probe", str(tmp_path / "out"), "--data", str(digits_labels), "--label-column", "label",
                 "--input-column", "path"]) == 0
    table = capsys.readouterr().out
    assert "layer-weighted" in table and "majority class" in table


def test_pretrain_help_lists_the_recipes_keys(capsys):
    assert main(["pretrain", "recipes/vision/tiny.yaml", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: multissl pretrain")
    for line in ("adapter (VisionConfig): ", "  --adapter.patch_size, --patch_size  int = 4",
                 "      Side of a square patch.",
                 "method (Data2VecConfig): ", "  --method.version, --version  1 | 2 = 2",
                 "  --train.max_steps, --max_steps  int = 600", "      Optimiser updates.",
                 "  --data.path, --data  str = ''"):
        assert line in out
    # a mistyped key is still the one-line error naming it, help or not
    assert main(["pretrain", "recipes/vision/tiny.yaml", "--patch_sise", "8", "--help"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() == \
        "multissl: error: unknown override --patch_sise (did you mean --patch_size?)"


def test_recipes_lists_and_shows_the_shipped_recipes(capsys):
    from pathlib import Path

    import yaml

    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    root = Path(__file__).resolve().parents[1] / "multissl" / "recipes"
    files = sorted(root.glob("*/*.yaml"))
    assert len(files) >= 16
    for path in files:
        name = f"{path.parent.name}/{path.stem}"
        [row] = [line.split() for line in lines if line.startswith(name + " ")]
        method = (yaml.safe_load(path.read_text()).get("method") or {}).get("name", "data2vec")
        assert row[1] == path.parent.name and row[2] == method
    assert main(["recipes", "show", "text/tiny"]) == 0
    assert capsys.readouterr().out == (root / "text" / "tiny.yaml").read_text()
    assert main(["recipes", "show", "text/tinny"]) == 2
    assert "did you mean text/tiny" in capsys.readouterr().err


def test_version():
    import multissl

    out = subprocess.run([sys.executable, "-m", "multissl", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"multissl {multissl.__version__}"
