"""One folder of malformed inputs per modality, pretrained on end to end (loaded and streamed): every
unusable file is skipped and named, every usable one is trained on, and the run finishes. The
generators and collators get property-based inputs in tests/core and tests/data."""

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from safetensors.torch import load_file

from multissl.modalities.audio.data import read_audio
from multissl.recipe import load_recipe
from multissl.train import pretrain
from tests.conftest import TINY_AUDIO, TINY_VISION
from tests.data.test_vision_data import bad_image_folder

ROOT = Path(__file__).resolve().parents[1]


def speech_folder(d: Path, speech_dir: Path) -> tuple[list[str], list[str]]:
    files = sorted(speech_dir.glob("*.wav"))
    wav = read_audio(files[0], 16000)
    sf.write(d / "rate8k.wav", read_audio(files[1], 8000), 8000)
    sf.write(d / "rate44k.flac", read_audio(files[2], 44100), 44100)
    sf.write(d / "stereo48k.ogg", np.stack([wav, wav * 0.5], 1), 16000, format="OGG", subtype="VORBIS")
    sf.write(d / "float.wav", wav * 3.0, 16000, subtype="FLOAT")  # louder than full scale
    (d / "flac_named.wav").write_bytes((d / "rate44k.flac").read_bytes())  # content decides, not the name
    (d / "empty.wav").write_bytes(b"")
    (d / "header_only.wav").write_bytes(files[3].read_bytes()[:44])
    (d / "text.mp3").write_text("this is not an mp3 file\n")
    (d / "noise.ogg").write_bytes(os.urandom(5000))
    sf.write(d / "tiny.wav", np.zeros(100, np.float32), 16000)
    nan = wav.copy()
    nan[::500] = np.nan  # in every window a crop can take
    sf.write(d / "nan.wav", nan, 16000, subtype="FLOAT")
    return (["rate8k.wav", "rate44k.flac", "stereo48k.ogg", "float.wav", "flac_named.wav"],
            ["empty.wav", "header_only.wav", "text.mp3", "noise.ogg", "tiny.wav", "nan.wav"])


def image_folder(d: Path, image_dirs) -> tuple[list[str], list[str]]:
    photo = Image.open(image_dirs[2][0]).convert("RGB")
    bad_image_folder(d, photo, image_dirs)  # writes d / "imgs"
    d = d / "imgs"
    digit = Image.open(d / "digit.png")
    digit.convert("L").save(d / "grey.png")
    photo.convert("RGBA").save(d / "alpha.png")
    photo.convert("P").save(d / "palette.gif")
    Image.fromarray(np.asarray(digit.convert("L"), np.uint16) * 257).save(d / "deep16.png")
    photo.convert("CMYK").save(d / "cmyk.jpg")
    (d / "page.jpg").write_text("<html>not found</html>")
    return (["cats/good.jpg", "digit.png", "grey.png", "alpha.png", "palette.gif", "deep16.png", "cmyk.jpg"],
            ["truncated.png", "empty.jpg", "noise.webp", "one.png", "page.jpg"])


CASES = {
    "audio": (ROOT / "recipes" / "audio" / "tiny.yaml", TINY_AUDIO),
    "vision": (ROOT / "recipes" / "vision" / "tiny.yaml", TINY_VISION),
}


@pytest.mark.parametrize("streaming", [False, True], ids=["loaded", "streamed"])
@pytest.mark.parametrize("modality", ["audio", "vision"])
def test_media_folder_of_malformed_files(modality, streaming, tmp_path, speech_dir, image_dirs, caplog):
    d = tmp_path / "data"
    d.mkdir()
    if modality == "audio":
        good, bad = speech_folder(d, speech_dir)
    else:
        good, bad = image_folder(d, image_dirs)
        d = d / "imgs"
    recipe, tiny = CASES[modality]
    steps = 4  # more than one pass over the usable files, so each one is read
    args = [*tiny, "--data", str(d), "--output_dir", str(tmp_path / "run"), "--max_steps", str(steps),
            "--batch_size", "2", "--streaming", str(streaming).lower(), "--shuffle_buffer", "0",
            "--num_workers", "0"]  # warnings from worker processes would not reach caplog
    with caplog.at_level(logging.WARNING):
        run_dir = pretrain(load_recipe(recipe, args))
    assert int(load_file(str(run_dir / "model.safetensors"))["ema_updates"]) == steps
    named = caplog.text
    for name in bad:
        assert f"{d / name}" in named, f"{name} was not named"
    for name in good:
        assert f"skipped {d / name}" not in named, f"{name} was skipped"
    if not streaming:  # the scan counts; nan.wav passes the header scan and is replaced when read
        scanned = 5 if modality == "audio" else len(bad)
        assert f"{scanned} of {scanned + len(good) + (modality == 'audio')} " in named


@pytest.mark.parametrize("streaming", [False, True], ids=["loaded", "streamed"])
def test_text_folder_of_malformed_files(streaming, tmp_path, kjv_rows, tiny_args, caplog):
    d = tmp_path / "data"
    d.mkdir()
    body = "\n".join(r["text"] for r in kjv_rows[:300])
    (d / "good.txt").write_text(body + "\n")
    (d / "latin1.txt").write_bytes(("Caf\xe9 na\xefve r\xe9sum\xe9\n" * 50).encode("latin-1"))
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.txt").write_text("\n   \n\t\n")
    (d / "binary.txt").write_bytes(os.urandom(4000))
    (d / "no_newline.txt").write_text(body[:2000])
    args = [*tiny_args, "--data", str(d), "--output_dir", str(tmp_path / "run"), "--max_steps", "2",
            "--streaming", str(streaming).lower()]
    with caplog.at_level(logging.WARNING):
        run_dir = pretrain(load_recipe(ROOT / "recipes" / "text" / "tiny-v2.yaml", args))
    assert "skipping 1 empty file(s)" in caplog.text and "empty.txt" in caplog.text
    if streaming:  # named and counted per file as the stream reads it
        for name in ("latin1.txt", "binary.txt"):
            assert re.search(rf"{d / name}: \d+ of \d+ lines had undecodable bytes, read as U\+FFFD", caplog.text)
        assert f"skipped {d / 'blank.txt'}: only blank lines (3)" in caplog.text
    else:  # counted when the corpus is loaded
        assert "lines had undecodable bytes (read as U+FFFD)" in caplog.text
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss"]) for r in rows)


def test_files_of_unrecognised_kinds_in_media_folders_are_named_and_counted(tmp_path, speech_dir, image_dirs, caplog):
    from multissl.modalities.audio.data import find_audio
    from multissl.modalities.vision.data import find_images

    speech, images = tmp_path / "speech", tmp_path / "images"
    for d, src in ((speech, sorted(speech_dir.glob("*.wav"))[:2]), (images, sorted(image_dirs[0].glob("*.png"))[:2])):
        (d / "sub").mkdir(parents=True)
        for f in src:
            (d / f.name).write_bytes(f.read_bytes())
        (d / "README").write_text("about this corpus")
        (d / "sub" / "labels.csv").write_text("path,label\n")
    with caplog.at_level(logging.WARNING):
        assert len(find_audio(str(speech))) == 2 and len(find_images(str(images))) == 2
    for d in (speech, images):
        assert f"{d}: left out 2 file(s) whose extension is not one of" in caplog.text
        assert "README, sub/labels.csv" in caplog.text
