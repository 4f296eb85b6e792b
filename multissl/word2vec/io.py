"""Word vectors on disk: the word2vec C text and binary formats (which gensim's
``KeyedVectors.load_word2vec_format`` reads), and a folder with safetensors, the vocabulary, the
settings and a model card. Folders are written to a temporary path and renamed."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from multissl.staging import staged_folder
from multissl.word2vec.train import Word2VecResult
from multissl.word2vec.vocab import Vocab


def save_word2vec_format(path: str | Path, words: list[str], vectors: np.ndarray, binary: bool = False) -> None:
    """Write ``words`` and float32 ``vectors`` in the word2vec C format (text or binary).

    Text values carry 9 significant digits, enough to read back the same float32 numbers.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    with open(path, "wb") as fh:
        fh.write(f"{len(words)} {vectors.shape[1]}\n".encode())
        for word, row in zip(words, vectors, strict=True):
            if binary:
                fh.write(word.encode("utf-8") + b" " + row.astype("<f4").tobytes() + b"\n")
            else:
                fh.write((word + " " + " ".join(f"{v:.9g}" for v in row.tolist()) + "\n").encode("utf-8"))


def load_word2vec_format(path: str | Path, binary: bool = False) -> tuple[list[str], np.ndarray]:
    """Read the word2vec C format back (words, float32 vectors)."""
    with open(path, "rb") as fh:
        n, dim = map(int, fh.readline().split())
        words, vectors = [], np.empty((n, dim), dtype=np.float32)
        for i in range(n):
            if binary:
                word = b""
                while (ch := fh.read(1)) != b" ":
                    if ch != b"\n":
                        word += ch
                vectors[i] = np.frombuffer(fh.read(4 * dim), dtype="<f4")
                words.append(word.decode("utf-8"))
            else:
                parts = fh.readline().decode("utf-8").rstrip("\n").split(" ")
                words.append(parts[0])
                vectors[i] = np.array(parts[1:], dtype=np.float32)
    return words, vectors


def save_vectors(result: Word2VecResult, out: str | Path, overwrite: bool = False, card: str | None = None) -> Path:
    """Write a vectors folder: vectors.txt / vectors.bin (word2vec C formats), vectors.safetensors,
    vocab.tsv (word, count), word2vec.json (settings and training figures) and README.md."""
    from safetensors.numpy import save_file

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out}: output folder exists and is not empty (pass --overwrite)")
    with staged_folder(out) as tmp:
        words = result.vocab.words
        save_word2vec_format(tmp / "vectors.txt", words, result.vectors)
        save_word2vec_format(tmp / "vectors.bin", words, result.vectors, binary=True)
        save_file({"vectors": np.ascontiguousarray(result.vectors, dtype=np.float32)}, str(tmp / "vectors.safetensors"))
        with open(tmp / "vocab.tsv", "w", encoding="utf-8") as fh:
            for w, c in zip(words, result.vocab.counts.tolist(), strict=True):
                fh.write(f"{w}\t{c}\n")
        meta = {"config": asdict(result.config), "stats": {k: float(v) for k, v in result.stats.items()},
                "total_words": result.vocab.total_words}
        (tmp / "word2vec.json").write_text(json.dumps(meta, indent=2))
        (tmp / "README.md").write_text(card if card is not None else vectors_card(result, out.name))
    return out


def load_vectors(folder: str | Path) -> tuple[Vocab, np.ndarray]:
    """(vocabulary, vectors) from a folder written by :func:`save_vectors`."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    if not (folder / "vectors.safetensors").is_file():
        raise FileNotFoundError(f"{folder}: no vectors.safetensors; pass a folder written by 'multissl word2vec'")
    vectors = load_file(str(folder / "vectors.safetensors"))["vectors"]
    words, counts = [], []
    for line in (folder / "vocab.tsv").read_text(encoding="utf-8").splitlines():
        w, c = line.rsplit("\t", 1)
        words.append(w)
        counts.append(int(c))
    meta = json.loads((folder / "word2vec.json").read_text())
    return Vocab(words, np.array(counts, dtype=np.int64), int(meta["total_words"])), vectors


def vectors_card(result: Word2VecResult, name: str) -> str:
    """README.md for a vectors folder."""
    c = result.config
    return "\n".join([
        "---", "library_name: gensim", "tags:", "- multissl", "- word2vec",
        f"- {'skip-gram' if c.sg else 'cbow'}", "pipeline_tag: feature-extraction", "---", "",
        f"# {name}", "",
        f"{len(result.vocab)} word vectors of size {c.dim}, trained by multissl word2vec "
        f"({'skip-gram' if c.sg else 'CBOW'}, window {c.window}, {c.negative} negatives, min_count {c.min_count}, "
        f"sample {c.sample}, {c.epochs} epochs) on {result.vocab.total_words} words.", "",
        "```python", "from gensim.models import KeyedVectors",
        'vectors = KeyedVectors.load_word2vec_format("vectors.bin", binary=True)', "```", "",
        f"Final training loss per pair: {result.stats.get('loss_per_pair', float('nan')):.4f}", "",
    ])
