"""word2vec's CPU training written out plainly in NumPy and Python integers, one update at a time,
with the kernels' sampling order (see multissl/word2vec/kernels.py): the yardstick that keeps speed
work on the compiled loops from changing what they compute."""

from __future__ import annotations

import numpy as np

M64 = 2**64
A, C = 6364136223846793005, 1442695040888963407  # the generator: state = A * state + C (mod 2**64)
GOLDEN = 0x9E3779B97F4A7C15
MAX_EXP, TABLE = 6.0, 1000


def mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % M64
    return z ^ (z >> 31)


class Stream:
    """The random numbers of one sentence: the top 32 bits of each state."""

    def __init__(self, epoch_key: int, sentence: int):
        self.state = mix((epoch_key + GOLDEN * sentence) % M64)

    def draw(self) -> int:
        self.state = (self.state * A + C) % M64
        return self.state >> 32


def tables() -> tuple[np.ndarray, np.ndarray]:
    x = (np.arange(TABLE) + 0.5) / TABLE * 2 * MAX_EXP - MAX_EXP
    return (1 / (1 + np.exp(-x))).astype(np.float32), np.log1p(np.exp(x)).astype(np.float32)


def keep_thresholds(counts: np.ndarray, sample: float) -> list[int]:
    """gensim's subsampling (keep probability (sqrt(c / t) + 1) * t / c, t = sample * total), as a
    threshold on a 32-bit draw."""
    t = sample * counts.sum()
    p = (np.sqrt(counts / t) + 1) * (t / counts)
    return [2**32 if q >= 1 else int(np.floor(q * 2.0**32)) for q in p]


def noise_word(stream: Stream, accept: np.ndarray, alias: np.ndarray) -> int:
    i = (stream.draw() * len(accept)) >> 32
    return i if stream.draw() < int(accept[i]) else int(alias[i])


def step(l1, work, syn1, word, label, alpha, sig, softplus) -> float:
    """One output row toward label 1 or 0; returns the loss, adds the input's gradient to work."""
    f = np.float32(np.dot(l1, syn1[word]))
    p = np.float32(1.0 if f >= MAX_EXP else 0.0 if f <= -MAX_EXP else sig[int((f + MAX_EXP) * (TABLE / MAX_EXP / 2))])
    g = np.float32((np.float32(label) - p) * alpha)
    z = f if label else -f
    loss = 0.0 if z >= MAX_EXP else -z if z <= -MAX_EXP else softplus[int((MAX_EXP - z) * (TABLE / MAX_EXP / 2))]
    work += g * syn1[word]
    syn1[word] += g * l1
    return float(loss)


def train_epoch(tokens, offsets, syn0, syn1, accept, alias, keep, alpha0, alpha1, window, negative, sg,
                epoch_key) -> tuple[float, int]:
    """One pass over sentences tokens[offsets[s]:offsets[s + 1]] (vocabulary ids) in order; updates
    syn0 and syn1 in place; returns the loss and the number of updates."""
    sig, softplus = tables()
    loss, units = 0.0, 0
    n_tokens = max(len(tokens), 1)
    for s in range(len(offsets) - 1):
        alpha = np.float32(alpha0 + (alpha1 - alpha0) * (offsets[s] / n_tokens))
        stream = Stream(epoch_key, s)
        kept = []
        for w in tokens[offsets[s]:offsets[s + 1]]:
            if keep[w] < 2**32 and stream.draw() >= keep[w]:
                continue
            kept.append(int(w))
        for pos, centre in enumerate(kept):
            reach = window - stream.draw() % window
            context = [kept[j] for j in range(max(0, pos - reach), min(len(kept), pos + reach + 1)) if j != pos]
            if sg:
                for c in context:  # predict the centre from each context word
                    work = np.zeros(syn0.shape[1], np.float32)
                    loss += step(syn0[c], work, syn1, centre, 1, alpha, sig, softplus)
                    for _ in range(negative):
                        w = noise_word(stream, accept, alias)
                        if w != centre:
                            loss += step(syn0[c], work, syn1, w, 0, alpha, sig, softplus)
                    syn0[c] += work
                    units += 1
            elif context:  # predict the centre from the mean of its context
                l1 = np.zeros(syn0.shape[1], np.float32)
                for c in context:
                    l1 += syn0[c]
                l1 *= np.float32(1.0 / len(context))
                work = np.zeros(syn0.shape[1], np.float32)
                loss += step(l1, work, syn1, centre, 1, alpha, sig, softplus)
                for _ in range(negative):
                    w = noise_word(stream, accept, alias)
                    if w != centre:
                        loss += step(l1, work, syn1, w, 0, alpha, sig, softplus)
                for c in context:
                    syn0[c] += work
                units += 1
    return loss, units


def epoch_key(seed: int, epoch: int) -> int:
    return mix((seed * 0x100000001B3 + epoch) % M64)
