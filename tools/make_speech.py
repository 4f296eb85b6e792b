"""Synthesise spoken corpora with espeak-ng (Debian package ``espeak-ng``), for tests, the demo and
the benchmarks: unlabelled spoken Bible verses to pretrain on, and labelled spoken digit words to
probe. Synthetic speech is good for checking a pipeline, not for claims about real speech.

    python tools/make_speech.py --out data/speech --verses 400
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbcwmd")
VARIANTS = ("", "+f2", "+m3", "+f4", "+klatt")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def say(text: str, out: Path, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> Path:
    """One utterance as a 22.05 kHz wav (espeak-ng's native rate; multissl resamples it)."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), text],
                   check=True, capture_output=True)
    return out


def _run(jobs: list[tuple[str, Path, str, int, int]], workers: int = 4) -> None:
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda j: say(*j), jobs))


def verses(out: Path, n: int = 200, start: int = 0, variants: tuple[str, ...] = VARIANTS) -> list[Path]:
    """``n`` King James verses (every 13th from ``start``), each spoken by one of the voices."""
    with gzip.open(ROOT / "data" / "kjv.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh][start::13][:n]
    out.mkdir(parents=True, exist_ok=True)
    voices = [a + v for v in variants for a in ACCENTS]
    jobs = [(r["text"], out / f"verse{i:05d}.wav", voices[i % len(voices)], 140 + 10 * (i % 5), 35 + 5 * (i % 7))
            for i, r in enumerate(rows)]
    _run(jobs)
    return [j[1] for j in jobs]


def digits(out: Path, accents: tuple[str, ...] = ACCENTS, variants: tuple[str, ...] = VARIANTS,
           speeds: tuple[int, ...] = (130, 180), pitches: tuple[int, ...] = (30, 60)) -> Path:
    """Spoken digit words in every accent x variant x speed x pitch; returns ``labels.csv`` (path,
    label, voice) beside the wavs."""
    out.mkdir(parents=True, exist_ok=True)
    jobs, rows = [], []
    for word in DIGITS:
        for a in accents:
            for v in variants:
                for s in speeds:
                    for p in pitches:
                        f = out / f"{word}_{a}{v.replace('+', '_')}_{s}_{p}.wav"
                        jobs.append((word, f, a + v, s, p))
                        rows.append({"path": f.name, "label": word, "voice": a + v})
    _run(jobs)
    labels = out / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "voice"])
        w.writeheader()
        w.writerows(rows)
    return labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/speech")
    ap.add_argument("--verses", type=int, default=400)
    args = ap.parse_args()
    out = Path(args.out)
    verses(out / "verses", args.verses)
    labels = digits(out / "digits")
    print(f"wrote {out / 'verses'} and {labels}")


if __name__ == "__main__":
    main()
