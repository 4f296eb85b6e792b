"""multissl word2vec against gensim 4 in one run, on the same real corpus (the King James Bible shipped
in data/, about 790k words) with the same parameters (dim 100, window 5, negative 5, min_count 5,
sample 1e-3, 5 epochs), skip-gram and CBOW, each run its own process. Two tables:

- **the whole command**, what a user waits for: ``multissl word2vec FILE --out DIR`` against a gensim
  process doing the same job (read the file, build the vocabulary, train, save in word2vec format),
  both on the same lower-cased one-sentence-per-line file. The first multissl run starts with an empty
  numba cache (a new user's first run, reported apart); the figure is the median of 3 runs after it,
  as a returning user has. Seconds, the ratio (gensim's seconds / ours: above 1 is faster than gensim)
  and each process's peak memory.
- **the training loop alone**: raw corpus words per second of training (the vocabulary is built
  before the clock starts, for both), WordSim-353 and SimLex-999 Spearman (from gensim's test data).

With ``--cuda`` it adds multissl on the GPU (warp-per-pair-slice kernels), reported against gensim in
the same run; ``--threads`` adds rows of both libraries at other thread counts (one seed each).

    python tools/bench_word2vec.py [--epochs 5] [--workers 2] [--threads 1 16] [--seeds 3] [--repeats 3] [--cuda]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(lib: str, sg: bool, epochs: int, workers: int, seed: int = 1) -> dict:
    import gensim

    from multissl.word2vec.evaluate import evaluate_analogies, evaluate_pairs
    from multissl.word2vec.train import Word2VecConfig, train_word2vec
    from multissl.word2vec.vocab import build_vocab, simple_tokenize

    with gzip.open(ROOT / "data" / "kjv.jsonl.gz", "rt") as fh:
        sentences = [simple_tokenize(json.loads(line)["text"]) for line in fh]
    words = sum(map(len, sentences)) * epochs
    if lib == "gensim":
        from gensim.models import Word2Vec

        model = Word2Vec(sg=int(sg), vector_size=100, window=5, negative=5, min_count=5, sample=1e-3,
                         workers=workers, seed=seed)
        model.build_vocab(sentences)
        t = time.perf_counter()
        model.train(sentences, total_examples=len(sentences), epochs=epochs)
        seconds = time.perf_counter() - t
        vocab_words, vectors = model.wv.index_to_key, model.wv.vectors
    elif lib == "multissl-cuda":
        import torch

        from multissl.word2vec.gpu import train_word2vec_gpu

        cfg = Word2VecConfig(sg=sg, epochs=epochs, seed=seed)
        vocab = build_vocab(sentences, cfg.min_count)
        train_word2vec_gpu(lambda: sentences[:200], Word2VecConfig(sg=sg, epochs=1, min_count=1), progress=False)
        torch.cuda.synchronize()
        t = time.perf_counter()
        result = train_word2vec_gpu(lambda: sentences, cfg, vocab=vocab, progress=False)
        seconds = time.perf_counter() - t
        vocab_words, vectors = result.vocab.words, result.vectors
    else:
        cfg = Word2VecConfig(sg=sg, epochs=epochs, workers=workers, seed=seed)
        vocab = build_vocab(sentences, cfg.min_count)
        train_word2vec(lambda: sentences[:50], Word2VecConfig(sg=sg, epochs=1, min_count=1), progress=False)  # compile
        t = time.perf_counter()
        result = train_word2vec(lambda: sentences, cfg, vocab=vocab, progress=False)
        seconds = time.perf_counter() - t
        vocab_words, vectors = result.vocab.words, result.vectors
    data = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data")
    ws = evaluate_pairs(vocab_words, vectors, os.path.join(data, "wordsim353.tsv"))
    sl = evaluate_pairs(vocab_words, vectors, os.path.join(data, "simlex999.txt"))
    an = evaluate_analogies(list(vocab_words), vectors, os.path.join(data, "questions-words.txt"))
    return {"words_per_second": words / seconds, "seconds": seconds, "wordsim": ws["spearman"],
            "wordsim_pairs": ws["pairs"], "simlex": sl["spearman"], "simlex_pairs": sl["pairs"],
            "analogies": an["accuracy"], "analogy_questions": an["questions"],
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "gpu_mb": _gpu_mb()}


GENSIM_COMMAND = """
import sys
from gensim.models import Word2Vec
from gensim.models.word2vec import LineSentence
corpus, out, sg, epochs, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
model = Word2Vec(LineSentence(corpus), sg=sg, vector_size=100, window=5, negative=5, min_count=5, sample=1e-3,
                 workers=workers, epochs=epochs, seed=1)
model.wv.save_word2vec_format(out, binary=True)
"""


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Seconds and peak resident MB of one process, start to exit."""
    t = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - t
    if status:
        raise SystemExit(f"{command[:4]} failed: {child.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def whole_commands(epochs: int, workers: int, repeats: int) -> None:
    """The whole-command table (see the module docstring)."""
    from multissl.word2vec.vocab import simple_tokenize

    work = Path(tempfile.mkdtemp(prefix="bench_word2vec_"))
    corpus = work / "kjv.txt"
    with gzip.open(ROOT / "data" / "kjv.jsonl.gz", "rt") as fh, corpus.open("w") as out:
        for line in fh:
            out.write(" ".join(simple_tokenize(json.loads(line)["text"])) + "\n")
    multissl = [str(Path(sys.executable).with_name("multissl")), "word2vec", str(corpus), "--epochs", str(epochs),
                "--workers", str(workers), "--overwrite"]
    print(f"\nThe whole command, {corpus.stat().st_size / 2**20:.1f} MB of text, {epochs} epochs, {workers} threads: "
          f"seconds start to exit (median of {repeats}; multissl's first run, with an empty compile cache, apart), "
          "x gensim = gensim's seconds / ours")
    print(f"{'mode':<5} {'gensim s':>9} {'multissl s':>11} {'x gensim':>9} {'first run s':>12} {'gensim MB':>10} "
          f"{'multissl MB':>12}")
    for mode in ("sg", "cbow"):
        cache = {"NUMBA_CACHE_DIR": str(work / f"numba-{mode}")}
        ours = [*multissl, f"--{mode}", "--out", str(work / f"ours-{mode}")]
        first, _ = timed(ours, cache)
        gensim = [sys.executable, "-c", GENSIM_COMMAND, str(corpus), str(work / f"gensim-{mode}.bin"),
                  str(int(mode == "sg")), str(epochs), str(workers)]
        warm, theirs = [], []
        for _ in range(repeats):  # interleaved, so that the host's load drifts over both alike
            warm.append(timed(ours, cache))
            theirs.append(timed(gensim))
        ours_s, theirs_s = statistics.median(w[0] for w in warm), statistics.median(t[0] for t in theirs)
        print(f"{mode:<5} {theirs_s:>9.2f} {ours_s:>11.2f} {theirs_s / ours_s:>9.2f} {first:>12.2f} "
              f"{max(t[1] for t in theirs):>10.0f} {max(w[1] for w in warm):>12.0f}")


def _gpu_mb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="threads of the main rows and the whole commands")
    p.add_argument("--threads", type=int, nargs="*", default=[1], help="extra rows, both libraries, these threads")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the main rows (quality as mean ± sd)")
    p.add_argument("--cuda", action="store_true", help="add multissl on the GPU")
    p.add_argument("--repeats", type=int, default=3, help="runs of each whole command (the median is shown)")
    p.add_argument("--one", nargs=3, metavar=("LIB", "MODE", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1] == "sg", args.epochs, args.workers, int(args.one[2]))))
        return
    runs = [(lib, args.workers, args.seeds) for lib in ("gensim", "multissl")]
    runs += [(lib, t, 1) for t in args.threads if t != args.workers for lib in ("gensim", "multissl")]
    if args.cuda:
        runs.append(("multissl-cuda", 0, args.seeds))
    rows = []
    for mode in ("sg", "cbow"):
        for lib, workers, seeds in runs:
            found = []
            for seed in range(1, seeds + 1):
                out = subprocess.run([sys.executable, __file__, "--one", lib, mode, str(seed), "--epochs",
                                      str(args.epochs), "--workers", str(workers)],
                                     capture_output=True, text=True, check=True)
                found.append(json.loads(out.stdout.strip().splitlines()[-1]))
            rows.append((mode, f"{lib} ({workers})" if workers else lib, workers, found))
    print(f"The training loop alone. King James Bible, {args.epochs} epochs, dim 100, window 5, negative 5, "
          "min_count 5 (threads in brackets). words/s: median over seeds; x gensim: against gensim with the same "
          "threads (the GPU against gensim with --workers); quality: mean ± sd over the seeds; WordSim-353 / "
          "SimLex-999 Spearman on pairs with both words in the vocabulary, analogy accuracy on questions with "
          "all four")
    print(f"{'mode':<5} {'library':<14} {'seeds':>5} {'words/s':>11} {'x gensim':>9} {'WordSim':>14} {'SimLex':>14} "
          f"{'analogies':>14} {'peak MB':>8} {'GPU MB':>7}")
    ref = {}
    for mode, lib, workers, found in rows:
        speed = statistics.median(r["words_per_second"] for r in found)
        if lib.startswith("gensim"):
            ref[mode, workers] = speed
        ratio = speed / ref.get((mode, workers), ref[mode, args.workers])
        print(f"{mode:<5} {lib:<14} {len(found):>5} {speed:>11,.0f} {ratio:>9.2f} "
              f"{mean_sd([r['wordsim'] for r in found]):>14} {mean_sd([r['simlex'] for r in found]):>14} "
              f"{mean_sd([r['analogies'] for r in found]):>14} {max(r['peak_mb'] for r in found):>8.0f} "
              f"{max(r['gpu_mb'] for r in found):>7.0f}")
    first = rows[0][3][0]
    print(f"scored: WordSim {first['wordsim_pairs']} pairs, SimLex {first['simlex_pairs']} pairs, "
          f"{first['analogy_questions']} analogy questions")
    whole_commands(args.epochs, args.workers, args.repeats)


if __name__ == "__main__":
    main()
