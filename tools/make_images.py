"""Real images that install with the test dependencies, written as files: scikit-learn's 1,797
handwritten digits (8x8 greyscale PNGs; a share held out with labels for probing) and scikit-image's
photos. For tests, the demo and the benchmarks.

    python tools/make_images.py --out data/images
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def digits(out: Path, holdout: float = 0.3, seed: int = 0) -> tuple[Path, Path]:
    """(folder of unlabelled digits to pretrain on, labels.csv of the held-out ones: path, label)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(seed).permutation(len(d.images))
    n_hold = int(len(order) * holdout)
    pre, lab = out / "unlabelled", out / "labelled"
    pre.mkdir(parents=True, exist_ok=True)
    lab.mkdir(parents=True, exist_ok=True)
    rows = []
    for rank, i in enumerate(order):
        img = Image.fromarray((d.images[i] * 255 / 16).round().astype(np.uint8), mode="L")
        if rank < n_hold:
            img.save(lab / f"digit{i:04d}.png")
            rows.append({"path": f"digit{i:04d}.png", "label": int(d.target[i])})
        else:
            img.save(pre / f"digit{i:04d}.png")
    labels = lab / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows(rows)
    # the pretraining images' own labels, for objectives that train on labels (SupCon); never the held-out ones
    with (out / "pretrain-labels.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "label"])
        w.writeheader()
        w.writerows({"image": f"unlabelled/digit{i:04d}.png", "label": int(d.target[i])} for i in order[n_hold:])
    return pre, labels


def photos(out: Path) -> list[Path]:
    """scikit-image's bundled photos as PNGs (greyscale ones stay greyscale)."""
    import skimage.data as data
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("astronaut", "camera", "coffee", "chelsea", "coins", "moon", "rocket", "immunohistochemistry"):
        p = out / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(p)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/images")
    args = ap.parse_args()
    pre, labels = digits(Path(args.out) / "digits")
    photos(Path(args.out) / "photos")
    print(f"wrote {pre}, {labels} and {Path(args.out) / 'photos'}")


if __name__ == "__main__":
    main()
