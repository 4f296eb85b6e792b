"""Shared fixtures: real text (the King James Bible shipped in data/), a tokenizer trained on it,
and tiny recipes."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
KJV = ROOT / "data" / "kjv.jsonl.gz"


@pytest.fixture(scope="session")
def kjv_rows() -> list[dict]:
    with gzip.open(KJV, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="session")
def kjv_file(tmp_path_factory, kjv_rows) -> Path:
    """4,000 verses from across the Bible, one per line."""
    path = tmp_path_factory.mktemp("corpus") / "kjv.txt"
    path.write_text("\n".join(r["text"] for r in kjv_rows[::7][:4000]) + "\n")
    return path


@pytest.fixture(scope="session")
def kjv_table(tmp_path_factory, kjv_rows) -> Path:
    """400 verses as JSON lines with their ``section`` (law, history, ...) as a label column."""
    import pandas as pd

    path = tmp_path_factory.mktemp("table") / "verses.jsonl"
    pd.DataFrame(kjv_rows[::70][:400]).to_json(path, orient="records", lines=True)
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, kjv_file) -> Path:
    from multissl.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "bpe"
    train_tokenizer([kjv_file], out, kind="bpe", vocab_size=800)
    return out


TINY = [
    "--encoder.dim", "32", "--encoder.depth", "3", "--encoder.heads", "4", "--encoder.ffn_dim", "64",
    "--adapter.max_length", "32", "--top_k", "2", "--decoder.layers", "2", "--decoder.dim", "32",
    "--decoder.kernel", "3", "--batch_size", "4", "--logging_steps", "2", "--save_steps", "3",
    "--report_to", "none", "--lr", "1e-3", "--warmup_steps", "0", "--health.check_after", "0",
    "--health.min_target_var", "0", "--health.min_pred_var", "0",
    "--ema.max_init_share", "0",  # tests check exact decays; the cap would speed up runs this short
]


DATA2VEC_KEYS = ("--top_k", "--decoder.", "--ema.", "--clones", "--method.clones", "--method.mask_noise_std")


def for_method(args: list[str], recipe: Path) -> list[str]:
    """``args`` without the overrides of data2vec's own keys when ``recipe`` is another objective's."""
    import yaml

    name = (yaml.safe_load(Path(recipe).read_text()).get("method") or {}).get("name", "data2vec")
    if name == "data2vec":
        return list(args)
    out, i = [], 0
    while i < len(args):
        if args[i].startswith(DATA2VEC_KEYS):
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


@pytest.fixture
def tiny_args(tmp_path, kjv_file, tokenizer_dir) -> list[str]:
    """Overrides that make recipes/text/tiny.yaml tiny and point it at the test corpus."""
    return [*TINY, "--data", str(kjv_file), "--tokenizer", str(tokenizer_dir),
            "--output_dir", str(tmp_path / "run")]


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory) -> Path:
    """Real decoded speech: 40 King James verses spoken by espeak-ng voices (22.05 kHz wavs)."""
    from tools.make_speech import verses

    out = tmp_path_factory.mktemp("speech") / "verses"
    verses(out, 40)
    return out


@pytest.fixture(scope="session")
def digits_labels(tmp_path_factory) -> Path:
    """Labelled spoken digit words (labels.csv: path, label, voice) in 3 accents x 2 variants x 2 speeds."""
    from tools.make_speech import digits

    return digits(tmp_path_factory.mktemp("digits"), accents=("en-us", "en-gb", "en-029"), variants=("", "+f2"),
                  speeds=(130, 180), pitches=(50,))


TINY_AUDIO = [
    "--encoder.dim", "32", "--encoder.depth", "2", "--encoder.heads", "4", "--encoder.ffn_dim", "64",
    "--conv_dim", "[32, 32, 32, 32, 32, 32, 32]", "--pos_conv_groups", "4", "--pos_conv_depth", "2",
    "--max_samples", "16000", "--top_k", "2", "--decoder.layers", "2", "--decoder.dim", "32",
    "--decoder.groups", "4", "--batch_size", "4", "--clones", "2", "--logging_steps", "2", "--save_steps", "3",
    "--report_to", "none", "--lr", "1e-3", "--warmup_steps", "0", "--health.check_after", "0",
    "--health.min_target_var", "0", "--health.min_pred_var", "0",
    "--ema.max_init_share", "0",  # tests check exact decays; the cap would speed up runs this short
]


@pytest.fixture(scope="session")
def image_dirs(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    """Real images: unlabelled handwritten digits, labels.csv of held-out ones, and photos."""
    from tools.make_images import digits, photos

    root = tmp_path_factory.mktemp("images")
    unlabelled, labels = digits(root / "digits")
    return unlabelled, labels, photos(root / "photos")


TINY_VISION = [
    "--encoder.dim", "32", "--encoder.depth", "2", "--encoder.heads", "4", "--encoder.ffn_dim", "64",
    "--image_size", "16", "--patch_size", "4", "--top_k", "2", "--decoder.layers", "2", "--decoder.dim", "32",
    "--decoder.groups", "4", "--batch_size", "8", "--clones", "2", "--logging_steps", "2", "--save_steps", "3",
    "--report_to", "none", "--lr", "1e-3", "--warmup_steps", "0", "--health.check_after", "0",
    "--health.min_target_var", "0", "--health.min_pred_var", "0",
    "--ema.max_init_share", "0",  # tests check exact decays; the cap would speed up runs this short
]


def first_pass(stream) -> list[dict]:
    """The examples of a stream's first pass (an example's seed carries its pass number)."""
    out = []
    for example in stream:
        if example["seed"][1] > 0:
            return out
        out.append(example)
    return out
