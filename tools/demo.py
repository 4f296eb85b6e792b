"""The main job, end to end. Text: train a tokenizer on the King James Bible shipped in data/,
pretrain the tiny data2vec text recipe for a few minutes, export it as a Hugging Face model, reload it
with AutoModel, probe it against the same architecture at random init on a labelled task (which of the
six sections of the Bible a held-out verse comes from), draw the loss and health curves. Speech: the
same with the tiny speech recipe on verses spoken by espeak-ng, probed on spoken digit words.
Vision: the same with the tiny image recipe on handwritten digits, probed on held-out ones.

    python tools/demo.py --out runs/demo [--max-steps 600] [--only text|speech|vision]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tools.make_speech and tools.make_images


def split_corpus(out: Path) -> tuple[Path, Path]:
    """Every tenth verse is held out, labelled, for the probe; the rest is the unlabelled corpus."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    corpus, labelled = data / "corpus.txt", data / "probe.jsonl"
    with gzip.open(ROOT / "data" / "kjv.jsonl.gz", "rt", encoding="utf-8") as fh, \
            open(corpus, "w") as c, open(labelled, "w") as lab:
        for i, line in enumerate(fh):
            row = json.loads(line)
            if i % 10 == 0:
                lab.write(json.dumps({"text": row["text"], "section": row["section"]}) + "\n")
            else:
                c.write(row["text"] + "\n")
    return corpus, labelled


def plot(run_dir: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(steps, [r["loss"] for r in rows])
    a.set(title="data2vec loss", xlabel="update", ylabel="loss")
    b.plot(steps, [r["target_var"] for r in rows], label="target_var")
    b.plot(steps, [r["pred_var"] for r in rows], label="pred_var")
    b.set(title="health (per-dimension std)", xlabel="update")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def text_part(out: Path, max_steps: int | None) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from multissl.export.hf import export
    from multissl.probe import format_table, probe
    from multissl.recipe import load_recipe
    from multissl.tokenizer import train_tokenizer
    from multissl.train import load_run, pretrain

    t0 = time.time()
    corpus, labelled = split_corpus(out)
    print(f"[text 1/5] corpus: {sum(1 for _ in open(corpus))} verses; probe set: {sum(1 for _ in open(labelled))}")
    train_tokenizer([corpus], out / "tokenizer", kind="bpe", vocab_size=8000)
    print("[text 2/5] BPE tokenizer trained (8000 tokens)")
    overrides = ["--data", str(corpus), "--tokenizer", str(out / "tokenizer"), "--output_dir", str(out / "run"),
                 "--report_to", "tensorboard", "--card.datasets", "bible-kjv", "--card.language", "en"]
    if max_steps:
        overrides += ["--max_steps", str(max_steps)]
    recipe = load_recipe(ROOT / "recipes" / "text" / "tiny.yaml", overrides)
    run_dir = pretrain(recipe)
    print(f"[text 3/5] pretrained {recipe.train.max_steps} updates in {time.time() - t0:.0f} s")
    model_dir = export(run_dir, out / "export")
    model = AutoModel.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    _, _, encoder = load_run(run_dir)
    batch = tok(["Blessed are the meek: for they shall inherit the earth.", "Jesus wept."],
                padding=True, return_tensors="pt")
    with torch.no_grad():
        hf = model(**batch, output_hidden_states=True).hidden_states
        ours, _ = encoder({"input_ids": batch["input_ids"]})
    valid = batch["attention_mask"].bool()
    diff = max(float((a - b)[valid].abs().max()) for a, b in zip(ours, hf, strict=True))
    print(f"[text 4/5] exported to {model_dir} as {type(model).__name__}; "
          f"AutoModel vs multissl max abs diff {diff:.1e}")
    results = probe(model_dir, labelled, label_column="section", folds=5, seed=0)
    print("[text 5/5] probe: which section of the Bible a held-out verse is from (6 classes)")
    print(format_table(results))
    plot(run_dir, out / "curves.png")
    print(f"curves: {out / 'curves.png'}   TensorBoard: tensorboard --logdir {run_dir}")


def speech_part(out: Path, max_steps: int | None) -> None:
    """Spoken verses (espeak-ng) to pretrain on; spoken digit words in unseen voices to probe."""
    import torch
    from transformers import AutoFeatureExtractor, AutoModel

    from multissl.export.hf import export
    from multissl.modalities.audio.data import read_audio
    from multissl.probe import format_table, probe
    from multissl.recipe import load_recipe
    from multissl.train import load_run, pretrain
    from tools.make_speech import VARIANTS, digits, verses

    t0 = time.time()
    probe_variants = ("+m3", "+klatt")
    files = verses(out / "verses", 400, variants=tuple(v for v in VARIANTS if v not in probe_variants))
    labelled = digits(out / "digits", variants=probe_variants)
    print(f"[speech 1/4] synthesised {len(files)} spoken verses to pretrain on and "
          f"{sum(1 for _ in open(labelled)) - 1} spoken digit words in other voices to probe")
    overrides = ["--data", str(out / "verses"), "--output_dir", str(out / "run"), "--report_to", "tensorboard",
                 "--card.language", "en"]
    if max_steps:
        overrides += ["--max_steps", str(max_steps)]
    recipe = load_recipe(ROOT / "recipes" / "audio" / "tiny.yaml", overrides)
    run_dir = pretrain(recipe)
    print(f"[speech 2/4] pretrained {recipe.train.max_steps} updates in {time.time() - t0:.0f} s")
    model_dir = export(run_dir, out / "export")
    model = AutoModel.from_pretrained(model_dir).eval()
    fe = AutoFeatureExtractor.from_pretrained(model_dir)
    _, _, encoder = load_run(run_dir)
    wavs = [read_audio(f) for f in files[:2]]
    batch = fe(wavs, sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        hf = model(**batch, output_hidden_states=True).hidden_states
        ours, pad = encoder(dict(batch))
    diff = max(float((a - b)[~pad].abs().max()) for a, b in zip(ours, hf, strict=True))
    print(f"[speech 3/4] exported to {model_dir} as {type(model).__name__}; "
          f"AutoModel vs multissl max abs diff {diff:.1e}")
    results = probe(model_dir, labelled, label_column="label", input_column="path", folds=5, seed=0)
    print("[speech 4/4] probe: which of 10 spoken digit words (voices unseen in pretraining)")
    print(format_table(results))
    plot(run_dir, out / "curves.png")


def vision_part(out: Path, max_steps: int | None) -> None:
    """Handwritten digits (scikit-learn's): 70% unlabelled to pretrain on, 30% labelled to probe."""
    import torch
    from transformers import AutoImageProcessor, AutoModel

    from multissl.export.hf import export
    from multissl.modalities.vision.data import Picture
    from multissl.probe import format_table, probe
    from multissl.recipe import load_recipe
    from multissl.train import load_run, pretrain
    from tools.make_images import digits

    t0 = time.time()
    unlabelled, labelled = digits(out / "digits")
    print(f"[vision 1/4] {sum(1 for _ in unlabelled.iterdir())} unlabelled handwritten digits to pretrain on, "
          f"{sum(1 for _ in open(labelled)) - 1} labelled ones held out to probe")
    overrides = ["--data", str(unlabelled), "--output_dir", str(out / "run"), "--report_to", "tensorboard"]
    if max_steps:
        overrides += ["--max_steps", str(max_steps)]
    recipe = load_recipe(ROOT / "recipes" / "vision" / "tiny.yaml", overrides)
    run_dir = pretrain(recipe)
    print(f"[vision 2/4] pretrained {recipe.train.max_steps} updates in {time.time() - t0:.0f} s")
    model_dir = export(run_dir, out / "export")
    model = AutoModel.from_pretrained(model_dir).eval()
    proc = AutoImageProcessor.from_pretrained(model_dir)
    _, _, encoder = load_run(run_dir)
    images = [Picture(str(p)).open() for p in sorted(unlabelled.iterdir())[:4]]
    batch = proc(images, return_tensors="pt")
    with torch.no_grad():
        hf = model(**batch, output_hidden_states=True)
        ours, _ = encoder(dict(batch))
        pairs = [*zip(ours, hf.hidden_states, strict=True), (encoder.norm(ours[-1]), hf.last_hidden_state)]
        diff = max(float((a - b).abs().max()) for a, b in pairs)
    print(f"[vision 3/4] exported to {model_dir} as {type(model).__name__}; "
          f"AutoModel vs multissl max abs diff {diff:.1e}")
    results = probe(model_dir, labelled, label_column="label", input_column="path", folds=5, seed=0)
    print("[vision 4/4] probe: which digit (10 classes), mean-pooled patches")
    print(format_table(results))
    plot(run_dir, out / "curves.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--max-steps", type=int, default=None, help="default: the tiny recipes'")
    p.add_argument("--only", choices=["text", "speech", "vision"], default=None)
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    if args.only in (None, "text"):
        text_part(out / "text", args.max_steps)
    if args.only in (None, "speech"):
        speech_part(out / "speech", args.max_steps)
    if args.only in (None, "vision"):
        vision_part(out / "vision", args.max_steps)
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
