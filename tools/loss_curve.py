"""A fixed-seed fingerprint of the tiny recipes: a few updates of each on shipped data, the logged loss
at every update and a hash of the final weights. Run it before and after a change that should not
change behaviour (a refactor) and compare:

    python tools/loss_curve.py --out /tmp/before.json
    python tools/loss_curve.py --out /tmp/after.json --against /tmp/before.json   # exit 1 on a difference
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPES = ("text/tiny", "text/tiny-v2", "audio/tiny", "vision/tiny")
COMMON = ["--max_steps", "8", "--batch_size", "4", "--logging_steps", "1", "--save_steps", "100",
          "--report_to", "none", "--seed", "3", "--warmup_steps", "2"]


def data_args(recipe: str, work: Path) -> list[str]:
    """Overrides that point ``recipe`` at real data made from what the project ships."""
    if recipe.startswith("text/"):
        corpus = work / "corpus.txt"
        if not corpus.exists():
            from multissl.tokenizer import train_tokenizer

            with gzip.open(ROOT / "data" / "kjv.jsonl.gz", "rt", encoding="utf-8") as fh:
                rows = [json.loads(line)["text"] for line in fh]
            corpus.write_text("\n".join(rows[::20]) + "\n")
            train_tokenizer([corpus], work / "tok", kind="bpe", vocab_size=1000)
        return ["--data", str(corpus), "--tokenizer", str(work / "tok")]
    if recipe.startswith("audio/"):
        from tools.make_speech import verses

        if not (work / "verses").exists():
            verses(work / "verses", 16)
        return ["--data", str(work / "verses")]
    from tools.make_images import digits

    if not (work / "digits").exists():
        digits(work / "digits")
    return ["--data", str(work / "digits" / "unlabelled")]


def weights_hash(path: Path) -> str:
    from safetensors.torch import load_file

    state = load_file(str(path))
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(recipe: str, work: Path) -> dict:
    from multissl.recipe import load_recipe
    from multissl.train import pretrain

    out = work / "runs" / recipe.replace("/", "_")
    r = load_recipe(ROOT / "recipes" / f"{recipe}.yaml", [*COMMON, *data_args(recipe, work), "--output_dir", str(out)])
    run = pretrain(r, overwrite=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"loss": [row["loss"] for row in rows], "weights": weights_hash(run / "model.safetensors")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--against", type=Path, help="a previous --out to compare with")
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {name: fingerprint(name, Path(tmp)) for name in a.recipes}
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, r in result.items():
        print(f"{name:14s} weights {r['weights']}  loss " + " ".join(f"{x:.4f}" for x in r["loss"]))
    if a.against:
        before = json.loads(a.against.read_text())
        differ = [n for n in result if before.get(n) != result[n]]
        print("identical to " + str(a.against) if not differ else f"DIFFERENT from {a.against}: {', '.join(differ)}")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
