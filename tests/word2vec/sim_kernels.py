"""Run in a subprocess with NUMBA_ENABLE_CUDASIM=1: the GPU kernels against a sequential numpy
reference of the same pairs and noise words (one warp, so the order is the reference's), then a
short simulated training run. Prints a JSON line."""

import json
import math
import sys

import numpy as np

from multissl.word2vec import gpu
from multissl.word2vec.train import Word2VecConfig


def reference(syn0, syn1, items, noise, a0, a1):
    """items: (input rows, target) per unit; CBOW units have several input rows."""
    s0, s1, loss = syn0.copy(), syn1.copy(), 0.0
    for p, (rows, t) in enumerate(items):
        alpha = a0 + (a1 - a0) * p / len(items)
        l1 = s0[rows].mean(0)
        work = np.zeros_like(l1)
        for k in range(noise.shape[1] + 1):
            w, label = (t, 1.0) if k == 0 else (noise[p, k - 1], 0.0)
            if k and w == t:
                continue
            f = float(np.clip(l1 @ s1[w], -20, 20))
            sig = 1 / (1 + math.exp(-f))
            loss -= math.log(sig + 1e-7) if label else math.log(1 - sig + 1e-7)
            g = (label - sig) * alpha
            work += g * s1[w]
            s1[w] += g * l1
        for r in rows:
            s0[r] += work
    return s0, s1, loss


def main() -> None:
    assert gpu.SIMULATED
    rng = np.random.default_rng(0)
    v, d, k = 12, 40, 3
    syn0 = ((rng.random((v, d)) - 0.5) / d).astype(np.float32)
    syn1 = (rng.random((v, d)) * 0.1).astype(np.float32)
    a0, a1 = np.float32(0.025), np.float32(0.02)
    out = {}

    inp, tgt = rng.integers(0, v, 25), rng.integers(0, v, 25)
    noise = rng.integers(0, v, (25, k)).astype(np.int32)
    noise[0, 0] = tgt[0]  # a noise draw of the target is skipped
    s0, s1, loss = reference(syn0, syn1, [([a], t) for a, t in zip(inp, tgt, strict=True)], noise, a0, a1)
    g0, g1, losses = syn0.copy(), syn1.copy(), np.zeros(1, np.float32)
    gpu.KERNELS["sg"][1, 32](inp, tgt, noise, g0, g1, a0, a1, 25, losses)
    out["sg"] = [float(np.abs(g0 - s0).max()), float(np.abs(g1 - s1).max()), float(losses[0]), loss]

    ids = rng.integers(0, v, 10).astype(np.int32)
    ptr = np.array([0, 2, 2, 5, 6, 8, 9, 11, 13, 14, 15], np.int32)  # centre 1 has no context
    ctx = rng.integers(0, 10, 15).astype(np.int32)
    noise = rng.integers(0, v, (10, k)).astype(np.int32)
    items = [(list(ids[ctx[ptr[c]:ptr[c + 1]]]), ids[c]) for c in range(10)]
    # the reference skips centres without context but keeps their place in the alpha schedule
    s0, s1, loss = syn0.copy(), syn1.copy(), 0.0
    for c, (rows, t) in enumerate(items):
        if rows:
            a_c = a0 + (a1 - a0) * c / 10
            s0, s1, lo = reference(s0, s1, [(rows, t)], noise[c:c + 1], a_c, a_c)
            loss += lo
    g0, g1 = syn0.copy(), syn1.copy()
    losses, counts = np.zeros(1, np.float32), np.zeros(1, np.int32)
    gpu.KERNELS["cbow"][1, 32](ids, ptr, ctx, noise, g0, g1, a0, a1, 10, losses, counts)
    out["cbow"] = [float(np.abs(g0 - s0).max()), float(np.abs(g1 - s1).max()), float(losses[0]), loss,
                   int(counts[0])]

    sentences = [line.split() for line in sys.argv[1:]]
    r = gpu.train_word2vec_gpu(lambda: sentences, Word2VecConfig(sg=True, epochs=1, min_count=1, dim=8, sample=0),
                               simulate=True, progress=False)
    out["train"] = {"shape": list(r.vectors.shape), "pairs": r.stats["pairs"], "loss": r.stats["loss_per_pair"],
                    "finite": bool(np.isfinite(r.vectors).all())}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
