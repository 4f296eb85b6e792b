"""Does a masked-LM export fill masks sensibly? Pretrain a ``method: mlm`` recipe on the King James
Bible that ships (data/kjv.jsonl.gz) without every 50th verse, export it, and ask
``pipeline("fill-mask")`` for one hidden word in each of the 623 held-back verses (the same word for
every run: a whole word that is one token, drawn once with a fixed seed). Reports top-1 / top-5
accuracy with standard errors beside the unigram guess (the most frequent training words, what a model
that ignores context answers) and the paired gain over it; prints the fills of a few held-back verses.

    python tools/fill_mask.py [--recipe text/mlm-tiny] [--seeds 0 1 2] [--out runs/fill-mask]
                              [--set KEY VALUE ...]
    python tools/fill_mask.py --export runs/fill-mask/text-mlm-tiny-0/export   # evaluate a folder only

A benchmark, not a test (a tiny recipe trains for minutes).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HELD_EVERY = 50  # verse i is held back when i % 50 == 0 (Genesis 1:1 among them)
EXAMPLES = 6  # held-back verses whose fills are printed


def split(out: Path) -> tuple[Path, list[str]]:
    """The training corpus (a text file) and the held-back verses."""
    rows = [json.loads(line)["text"] for line in gzip.open(ROOT / "data" / "kjv.jsonl.gz", "rt")]
    out.mkdir(parents=True, exist_ok=True)
    train = out / "train.txt"
    if not train.exists():
        train.write_text("\n".join(t for i, t in enumerate(rows) if i % HELD_EVERY) + "\n")
    return train, [t for i, t in enumerate(rows) if i % HELD_EVERY == 0]


def cloze_items(tokenizer, verses: list[str], train: Path, max_tokens: int
                ) -> tuple[list[tuple[str, str]], list[str]]:
    """One (verse with a mask, hidden word) per held-back verse, and the unigram guesses: the five
    most frequent one-token words of the training corpus, most frequent first. Words are the
    space-separated pieces that are letters only and one token with their leading space, not the first
    word (a verse's first word has no leading space). A verse longer than ``max_tokens`` loses words at
    its ends, the farther end first, until it fits."""
    def one_token(word: str) -> bool:
        return word.isalpha() and len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1

    counts = Counter(w for line in train.read_text().splitlines() for w in line.split()[1:] if w.isalpha())
    unigram = [w for w, _ in counts.most_common(200) if one_token(w)][:5]
    rng = random.Random(0)
    items = []
    for verse in verses:
        words = verse.split()
        choices = [i for i in range(1, len(words)) if one_token(words[i])]
        if choices:
            i = rng.choice(choices)
            left, right = words[:i], words[i + 1:]
            while len(tokenizer(" ".join([*left, tokenizer.mask_token, *right]))["input_ids"]) > max_tokens:
                left, right = (left[1:], right) if len(left) > len(right) else (left, right[:-1])
            items.append((" ".join([*left, tokenizer.mask_token, *right]), words[i]))
    return items, unigram


def evaluate(model_dir: Path, verses: list[str], train: Path) -> dict:
    """Top-1 / top-5 accuracy of the export's fills and of the unigram guess, with standard errors, and
    the paired gain (its SE from the per-verse differences)."""
    import numpy as np
    from transformers import pipeline

    from multissl.classifiers import accuracy_se, paired_gain

    fill = pipeline("fill-mask", model=str(model_dir), tokenizer=str(model_dir), top_k=5,
                    model_kwargs={"attn_implementation": "eager"})  # eager: the attention maps are returned
    # RoBERTa-style positions start after the padding index: two fewer tokens than position embeddings
    items, unigram = cloze_items(fill.tokenizer, verses, train, fill.model.config.max_position_embeddings - 2)
    answers = [[g["token_str"].strip() for g in fill(text)] for text, _ in items]
    row: dict = {"items": len(items), "unigram": unigram}
    for k in (1, 5):
        ours = np.array([word in a[:k] for (_, word), a in zip(items, answers, strict=True)], float)
        base = np.array([word in unigram[:k] for _, word in items], float)
        row[f"top{k}"], row[f"top{k}_se"] = accuracy_se(ours)
        row[f"unigram_top{k}"], row[f"unigram_top{k}_se"] = accuracy_se(base)
        row[f"top{k}_gain"], row[f"top{k}_gain_se"] = paired_gain(ours, base)
    row["examples"] = [(text, word, a) for (text, word), a in zip(items[:EXAMPLES], answers[:EXAMPLES], strict=True)]
    row |= attention(fill.model.base_model, fill.tokenizer, verses[:64])
    return row


def attention(model, tokenizer, texts: list[str]) -> dict[str, float]:
    """Why a model answers with frequent words: its attention per layer, as the entropy of each row
    over that of uniform attention (1: it averages the whole sequence, a bag of words) and the weight on
    the previous token (what a model that reads word order learns early; 1/length when uniform)."""
    import torch

    batch = tokenizer(texts, truncation=True, max_length=model.config.max_position_embeddings - 2, padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        maps = model(**batch, output_attentions=True).attentions  # per layer (B, H, T, T)
    real = batch["attention_mask"].bool()
    n = real.sum(1).float()[:, None, None]
    entropy = [float((-(a * a.clamp_min(1e-12).log()).sum(-1) / n.log()).mean(1)[real].mean()) for a in maps]
    previous = [float(a.diagonal(-1, 2, 3).mean(1)[real[:, 1:]].mean()) for a in maps]
    return {"attention_entropy": entropy, "previous_token_attention": previous, "uniform_weight": float(1 / n.mean())}


def run(recipe_name: str, seed: int, out: Path, train: Path, tokenizer: Path, extra: list[str]) -> Path:
    from multissl.export.hf import export
    from multissl.recipe import load_recipe
    from multissl.train import pretrain

    args = ["--data", str(train), "--tokenizer", str(tokenizer), "--output_dir", str(out / "run"),
            "--seed", str(seed), "--report_to", "none", *extra]
    run_dir = pretrain(load_recipe(ROOT / "recipes" / f"{recipe_name}.yaml", args), overwrite=True)
    return export(run_dir, out / "export", overwrite=True)


def report(row: dict) -> str:
    lines = [f"{row['name']}: {row['items']} held-back verses, one hidden word each"]
    for k in (1, 5):
        lines.append(f"  top-{k}: {row[f'top{k}']:.3f} ± {row[f'top{k}_se']:.3f}   unigram guess "
                     f"{row[f'unigram_top{k}']:.3f} ± {row[f'unigram_top{k}_se']:.3f}   gain "
                     f"{row[f'top{k}_gain']:+.3f} ± {row[f'top{k}_gain_se']:.3f} "
                     f"({row[f'top{k}_gain'] / row[f'top{k}_gain_se']:.1f} SE)")
    lines.append(f"  unigram guesses: {', '.join(row['unigram'])}")
    lines.append(f"  attention entropy / uniform per layer: {', '.join(f'{e:.2f}' for e in row['attention_entropy'])}; "
                 f"weight on the previous token: {', '.join(f'{w:.3f}' for w in row['previous_token_attention'])} "
                 f"(uniform: {row['uniform_weight']:.3f})")
    lines += [f"  {text}\n    hidden: {word}   fills: {', '.join(a)}" for text, word, a in row["examples"]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="text/mlm-tiny")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/fill-mask")
    p.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="a recipe override for every run, e.g. --set max_steps 3000")
    p.add_argument("--export", nargs="+", type=Path, help="evaluate these export folders only")
    args = p.parse_args()
    out = Path(args.out)
    train, verses = split(out)
    if args.export:
        for folder in args.export:
            print(report({"name": str(folder), **evaluate(folder, verses, train)}), flush=True)
        return
    from multissl.tokenizer import train_tokenizer

    tokenizer = out / "tokenizer"
    if not (tokenizer / "tokenizer_config.json").exists():
        train_tokenizer([train], tokenizer, kind="bpe", vocab_size=8000)
    extra = [x for kv in args.set for x in (f"--{kv[0]}", kv[1])]
    results = out / "results.jsonl"
    for seed in args.seeds:
        name = f"{args.recipe.replace('/', '-')}-{seed}"
        model_dir = run(args.recipe, seed, out / name, train, tokenizer, extra)
        row = {"name": name, "recipe": args.recipe, "seed": seed, "overrides": extra,
               **evaluate(model_dir, verses, train)}
        with open(results, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(report(row), flush=True)


if __name__ == "__main__":
    main()
