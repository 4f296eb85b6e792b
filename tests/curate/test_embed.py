"""multissl embed: every modality, shards, resume after a kill, bad files, --strict, torchrun."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_from_disk

from multissl.cli import main
from multissl.curate.embed import embed

ROOT = Path(__file__).resolve().parents[2]


def _vectors(folder: Path) -> np.ndarray:
    return np.asarray(load_from_disk(str(folder)).with_format("numpy")["embedding"])


def test_text_embeddings_are_the_masked_mean_of_the_last_layer(tmp_path, text_export, verses_file):
    from transformers import AutoModel, AutoTokenizer

    out = embed(text_export, str(verses_file), tmp_path / "emb", shard_size=50, batch_size=16)
    ds = load_from_disk(str(out))
    rows = [json.loads(line) for line in verses_file.read_text().splitlines()]
    assert ds.column_names == ["id", "input", "label", "embedding"]
    assert ds["input"] == [r["text"] for r in rows]
    assert ds["label"] == [r["label"] for r in rows]
    assert ds["id"][:2] == [f"{verses_file}:1", f"{verses_file}:2"]
    assert not (out / "parts").exists() and (out / "index.faiss").is_file()
    # independently: the export through transformers, mean over the non-padding tokens of the last layer
    model, tok = AutoModel.from_pretrained(text_export).eval(), AutoTokenizer.from_pretrained(text_export)
    texts = [r["text"] for r in rows[:5]]
    with torch.no_grad():
        for text, got in zip(texts, _vectors(out)[:5], strict=True):
            enc = tok([text], return_tensors="pt", truncation=True,
                      max_length=model.config.max_position_embeddings - model.config.pad_token_id - 1)
            want = model(**enc).last_hidden_state[0].mean(0).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    again = embed(text_export, str(verses_file), tmp_path / "emb2", layer=1, pool="cls", normalize=True)
    v = _vectors(again)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    with torch.no_grad():
        enc = tok([texts[0]], return_tensors="pt")
        first = model(**enc, output_hidden_states=True).hidden_states[1][0, 0].numpy()
    np.testing.assert_allclose(v[0], first / np.linalg.norm(first), rtol=1e-4, atol=1e-5)


def test_resume_after_a_kill_gives_the_same_dataset(tmp_path, text_export, kjv_file):
    data = tmp_path / "verses.txt"
    data.write_text("\n".join(kjv_file.read_text().splitlines()[:900]) + "\n")
    settings = ["--shard-size", "30", "--batch-size", "15"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "multissl", "embed", str(text_export), "--data", str(data),
                             "--out", str(out), *settings], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "parts" / "rank00000-shard00003.arrow").exists() and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "state.json").exists(), "the run ended before it could be killed"
    assert 4 <= len(list((out / "parts").glob("*.arrow"))) < 50

    assert main(["embed", str(text_export), "--data", str(data), "--out", str(out), *settings]) == 0  # resumes
    whole = embed(text_export, str(data), tmp_path / "whole", shard_size=30, batch_size=15)
    a, b = load_from_disk(str(whole)), load_from_disk(str(out))
    assert a["id"] == b["id"] and a.num_rows == 900
    np.testing.assert_array_equal(_vectors(whole), _vectors(out))
    # a finished folder is left as it is; other settings are an error naming the key
    assert main(["embed", str(text_export), "--data", str(data), "--out", str(out), *settings]) == 0
    with pytest.raises(Exception, match="pool='mean', not 'cls'"):
        embed(text_export, str(data), out, shard_size=30, batch_size=15, pool="cls")


def test_images_bad_files_are_skipped_and_named_or_stop_with_strict(tmp_path, vision_checkpoint, digit_folders,
                                                                    caplog, capsys):
    from PIL import Image

    data = tmp_path / "digits"
    for label in ("3", "5", "7"):
        shutil.copytree(digit_folders / label, data / label)
    n = len(list(data.rglob("*.png")))
    (data / "3" / "truncated.png").write_bytes((data / "3").glob("*.png").__next__().read_bytes()[:60])
    (data / "5" / "notes.png").write_text("not an image")
    Image.new("L", (1, 1)).save(data / "7" / "dot.png")  # tiny but valid: embedded
    with caplog.at_level(logging.WARNING):
        out = embed(vision_checkpoint, str(data), tmp_path / "emb", shard_size=64)
    ds = load_from_disk(str(out))
    assert ds.num_rows == n + 1 and "label" in ds.column_names
    assert {Path(i).parent.name for i in ds["id"]} == set(ds["label"])
    assert all(Path(i).parent.name == lab for i, lab in zip(ds["id"], ds["label"], strict=True))
    skipped = [json.loads(line)["id"] for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(Path(s).name for s in skipped) == ["notes.png", "truncated.png"]
    assert "truncated.png" in caplog.text and f"2 of {n + 3} items skipped" in caplog.text

    assert main(["embed", str(vision_checkpoint), "--data", str(data), "--out", str(tmp_path / "s2"), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars: the one-line error
    assert err.startswith("multissl: error: ") and "truncated.png" in err and "--strict is set" in err


def test_speech_embeddings_and_an_empty_recording(tmp_path, audio_checkpoint, speech_dir, caplog):
    import soundfile as sf
    from transformers import AutoFeatureExtractor, AutoModel

    from multissl.modalities.audio.data import read_audio

    data = tmp_path / "wavs"
    data.mkdir()
    files = sorted(speech_dir.glob("*.wav"))[:12]
    for f in files:
        (data / f.name).symlink_to(f)
    sf.write(data / "empty.wav", np.zeros(0, np.float32), 16000)
    with caplog.at_level(logging.WARNING):
        out = embed(audio_checkpoint, str(data), tmp_path / "emb", shard_size=5, batch_size=4)
    ds = load_from_disk(str(out))
    assert ds.num_rows == 12 and "label" not in ds.column_names
    assert "empty.wav" in caplog.text
    # the first recording alone through transformers: the mean of the last layer over its frames
    model = AutoModel.from_pretrained(audio_checkpoint).eval()
    fe = AutoFeatureExtractor.from_pretrained(audio_checkpoint)
    wav = read_audio(str(data / files[0].name), 16000)
    with torch.no_grad():
        want = model(**fe([wav], sampling_rate=16000, return_tensors="pt")).last_hidden_state[0].mean(0).numpy()
    row = list(ds["id"]).index(str(data.resolve() / files[0].name))
    np.testing.assert_allclose(_vectors(out)[row], want, rtol=1e-3, atol=1e-4)


def test_bad_input_is_one_line_naming_it(tmp_path, vision_checkpoint, text_export, speech_dir, verses_file, capsys):
    cases = [
        (["embed", str(vision_checkpoint), "--data", str(speech_dir)], "no items (files with the extensions"),
        (["embed", str(text_export), "--data", str(speech_dir)], "a text encoder reads tables"),
        (["embed", str(tmp_path), "--data", str(verses_file)], "not a model folder"),
        (["embed", str(text_export), "--data", str(tmp_path / "nope.jsonl")], "nope.jsonl: no such file"),
        (["embed", str(text_export), "--data", str(verses_file), "--input-column", "body"], "no column 'body'"),
        (["embed", str(text_export), "--data", str(verses_file), "--layer", "9"], "--layer 9: the encoder has"),
    ]
    for i, (argv, message) in enumerate(cases):
        assert main([*argv, "--out", str(tmp_path / f"o{i}")]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("multissl: error: ") and message in err, err
    with pytest.raises(Exception, match="another modality"):
        table = tmp_path / "sounds.csv"
        table.write_text("path\n" + "\n".join(str(p) for p in sorted(speech_dir.glob("*.wav"))[:3]) + "\n")
        embed(vision_checkpoint, str(table), tmp_path / "o9")


def test_two_ranks_embed_their_parts_into_one_dataset(tmp_path, text_export, verses_file):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    data = tmp_path / "verses.jsonl"
    data.write_text("\n".join(verses_file.read_text().splitlines()[:90]) + "\n")
    args = ["embed", str(text_export), "--data", str(data), "--shard-size", "20"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "multissl", *args, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = embed(text_export, str(data), tmp_path / "one", shard_size=20)
    a, b = load_from_disk(str(one)), load_from_disk(str(tmp_path / "two"))
    assert a["id"] == b["id"] and a["label"] == b["label"]
    np.testing.assert_allclose(_vectors(one), _vectors(tmp_path / "two"), rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "two" / "embed.json").read_text())["world_size"] == 2
