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
]


@pytest.fixture
def tiny_args(tmp_path, kjv_file, tokenizer_dir) -> list[str]:
    """Overrides that make recipes/text/tiny.yaml tiny and point it at the test corpus."""
    return [*TINY, "--data", str(kjv_file), "--tokenizer", str(tokenizer_dir),
            "--output_dir", str(tmp_path / "run")]
