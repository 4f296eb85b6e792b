"""Real corpora for the quality benchmark that the project does not ship, each split into an
unlabelled part to pretrain on and a labelled part, never seen in pretraining, to probe on.

- text: WordNet 3.0 glosses (Debian ``wordnet-base``), short English definitions; labels are the
  lexicographer file of noun synsets (noun.animal, noun.artifact, ...), the 12 largest.
- speech: klettres recordings (Debian ``klettres-data``), letters and syllables read by people in many
  languages; labels are the language, the 13 with the most recordings (30% of at most 100 each
  held out).
- vision: scikit-learn's handwritten digits (see make_images.py), 10 classes.

    apt-get install wordnet-base klettres-data
    python tools/heldout_data.py --out runs/heldout
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tools.make_images

WORDNET = Path("/usr/share/wordnet")
KLETTRES = Path("/usr/share/klettres")
NOUN_FILES = ["noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body",
              "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
              "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
              "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
              "noun.substance", "noun.time"]  # lexicographer files 03..28


def _need(path: Path, package: str) -> None:
    if not path.is_dir():
        raise SystemExit(f"{path}: not found; install it with 'apt-get install {package}'")


def wordnet_glosses(out: Path, classes: int = 12, per_class: int = 250, seed: int = 0) -> tuple[Path, Path]:
    """(corpus.txt of every gloss not held out, probe.jsonl of ``classes`` x ``per_class`` labelled noun
    glosses)."""
    _need(WORDNET, "wordnet-base")
    rows = []  # (gloss, label or None)
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (WORDNET / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # the licence header
            fields, gloss = line.split("|", 1)
            lex = int(fields.split()[1])
            rows.append((gloss.strip(), NOUN_FILES[lex - 3] if pos == "noun" else None))
    counts = Counter(label for _, label in rows if label)
    chosen = {label for label, _ in counts.most_common(classes)}
    rng = np.random.default_rng(seed)
    held = set()
    for label in sorted(chosen):
        idx = [i for i, (_, lab) in enumerate(rows) if lab == label]
        held.update(int(i) for i in rng.choice(idx, per_class, replace=False))
    out.mkdir(parents=True, exist_ok=True)
    corpus, probe = out / "corpus.txt", out / "probe.jsonl"
    with open(corpus, "w") as c, open(probe, "w") as p, open(out / "pretrain-labels.jsonl", "w") as t:
        for i, (gloss, label) in enumerate(rows):
            if i in held:
                p.write(json.dumps({"text": gloss, "label": label}) + "\n")
            else:
                c.write(gloss + "\n")
                if label in chosen:  # the pretraining glosses' own labels, for objectives that train on labels
                    t.write(json.dumps({"text": gloss, "label": label}) + "\n")
    return corpus, probe


def klettres(out: Path, classes: int = 13, per_class: int = 100, holdout: float = 0.3, seed: int = 0
             ) -> tuple[Path, Path]:
    """(manifest.csv of the recordings to pretrain on, labels.csv of held-out ones: path, label). The
    held-out share of each language is never in the pretraining manifest."""
    _need(KLETTRES, "klettres-data")
    by_lang: dict[str, list[str]] = {}
    for f in sorted(KLETTRES.glob("*/*/*")):
        if f.suffix.lower() in (".ogg", ".wav", ".mp3"):
            by_lang.setdefault(f.parts[-3], []).append(str(f))
    rng = np.random.default_rng(seed)
    langs = sorted(by_lang, key=lambda k: (-min(len(by_lang[k]), per_class), k))[:classes]
    out.mkdir(parents=True, exist_ok=True)
    pre, lab = [], []
    for lang in langs:
        files = list(rng.permutation(by_lang[lang]))
        n_hold = int(round(min(len(files), per_class) * holdout))
        lab += [(f, lang) for f in files[:n_hold]]
        pre += files[n_hold:]
    others = [f for lang, files in by_lang.items() if lang not in langs for f in files]
    pre += others  # recordings of the other languages are unlabelled pretraining data too
    manifest, labels = out / "pretrain.csv", out / "labels.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path"])
        w.writerows([f] for f in pre)
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows(lab)
    return manifest, labels


def digits(out: Path) -> tuple[Path, Path]:
    """(folder of unlabelled digits, labels.csv of held-out ones)."""
    from tools.make_images import digits as make

    return make(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/heldout")
    args = ap.parse_args()
    out = Path(args.out)
    print(wordnet_glosses(out / "text"), klettres(out / "speech"), digits(out / "vision"))


if __name__ == "__main__":
    main()
