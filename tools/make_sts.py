"""A sentence-similarity (STS-style) pairs file from data that installs with the test dependencies:
the Lee corpus of 50 news documents and its human similarity judgements (Lee, Pincombe and Welsh 2005,
"An empirical evaluation of models of text document similarity"), which gensim ships in its test data.
Each of the 1,225 pairs of documents is a row: sentence1, sentence2, score (the mean human rating,
from 0 to 1). For ``multissl probe ... --sts FILE``, tests and benchmarks.

    python tools/make_sts.py --out data/lee-sts.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def lee_pairs(out: Path) -> Path:
    """Write the Lee pairs to ``out`` (CSV: sentence1, sentence2, score), read from the installed gensim."""
    import gensim

    data = Path(gensim.__file__).parent / "test" / "test_data"
    # the corpus is Latin-1 (pound signs)
    docs = [line.strip() for line in (data / "lee.cor").read_text(encoding="latin-1").splitlines() if line.strip()]
    rows = [line.split("\t") for line in (data / "similarities0-1.txt").read_text().splitlines() if line.strip()]
    if len(docs) != len(rows):
        raise ValueError(f"{data}: {len(docs)} documents but a {len(rows)}-row similarity matrix")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["sentence1", "sentence2", "score"])
        for i in range(len(docs)):
            for j in range(i + 1, len(docs)):  # the matrix's upper triangle holds the ratings
                w.writerow([docs[i], docs[j], float(rows[i][j])])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/lee-sts.csv")
    print(f"wrote {lee_pairs(Path(ap.parse_args().out))}")


if __name__ == "__main__":
    main()
