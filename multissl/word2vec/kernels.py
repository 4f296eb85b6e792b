"""The compiled CPU loops of word2vec: skip-gram and CBOW with negative sampling.

Sentences are trained lock-free on all threads (Hogwild), one SGD step per (input, output) pair in
corpus order, as in gensim's Cython and the original C tool. What makes them fast:

- noise words from Walker's alias table (two random numbers and two loads, where a binary search over
  the cumulative distribution is a chain of a dozen dependent loads and mispredicted branches);
- random numbers from a 64-bit linear congruential generator (one multiply-add a draw), seeded per
  sentence, so a run does not depend on how sentences are spread over threads;
- sigmoid and loss from 1000-entry tables over [-6, 6], as the C tool does: no ``exp`` or ``log``;
- rows taken as 1-d views before the inner loops, so that LLVM knows they do not move and
  vectorises them (indexing ``syn0[buf[j], k]`` inside the loop kept CBOW 2.5x slower);
- float32 throughout (a float64 constant in the update turned the vector loops into conversions);
- per-thread scratch allocated once per block of sentences.

The random stream of a sentence: one draw per word whose keep probability is below 1 (subsampling),
then per kept centre word one draw for its shrunk window, and two draws per noise word: ``negative``
noise words per context word in skip-gram, per centre word in CBOW. A draw is the top 32 bits of the
state. ``tests/word2vec/reference.py`` repeats all of it in NumPy, update for update.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64

MAX_EXP = 6.0
TABLE_SIZE = 1000
LCG_A = 6364136223846793005  # Knuth's MMIX constants
LCG_C = 1442695040888963407
GOLDEN = 0x9E3779B97F4A7C15


def sigmoid_tables() -> tuple[np.ndarray, np.ndarray]:
    """sigmoid(x) and log(1 + exp(x)) (the loss of a logit on the wrong side) at the centres of
    ``TABLE_SIZE`` bins over [-MAX_EXP, MAX_EXP]."""
    x = (np.arange(TABLE_SIZE) + 0.5) / TABLE_SIZE * 2 * MAX_EXP - MAX_EXP
    return (1 / (1 + np.exp(-x))).astype(np.float32), np.log1p(np.exp(x)).astype(np.float32)


def epoch_seed(seed: int, epoch: int) -> int:
    """The key of an epoch's random streams: a sentence's generator starts at
    ``mix(key + GOLDEN * sentence)`` (``sentence`` counted from the epoch's start)."""
    return _mix_int((seed * 0x100000001B3 + epoch) % 2**64)


def _mix_int(z: int) -> int:
    """splitmix64's finaliser on a Python int (the compiled ``_mix`` is the same function)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


@njit(inline="always")
def _mix(z):  # pragma: no cover (compiled)
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    return z ^ (z >> uint64(31))


@njit(inline="always")
def _next(state):  # pragma: no cover (compiled)
    state = state * uint64(LCG_A) + uint64(LCG_C)
    return state, state >> uint64(32)


@njit(inline="always")
def _noise_word(state, accept, alias):  # pragma: no cover (compiled)
    """A noise word from Walker's alias table: a uniform bucket, kept or swapped for its alias."""
    state, r = _next(state)
    i = np.int64((r * uint64(accept.shape[0])) >> uint64(32))
    state, r = _next(state)
    return state, (i if r < accept[i] else alias[i])


@njit(cache=True)
def alias_table(p):  # pragma: no cover (compiled)
    """Walker's alias table of the distribution ``p`` (Vose's construction): bucket ``i`` keeps word
    ``i`` when a uniform 32-bit draw is below ``accept[i]``, else gives ``alias[i]``."""
    n = p.shape[0]
    scaled = p / p.sum() * n
    accept = np.full(n, 1 << 32, np.uint64)
    alias = np.arange(n).astype(np.int32)
    small, large = np.empty(n, np.int64), np.empty(n, np.int64)
    ns = nl = 0
    for i in range(n):
        if scaled[i] < 1.0:
            small[ns] = i
            ns += 1
        else:
            large[nl] = i
            nl += 1
    while ns and nl:
        ns -= 1
        s = small[ns]
        g = large[nl - 1]
        accept[s] = np.uint64(scaled[s] * 2.0**32)
        alias[s] = g
        scaled[g] -= 1.0 - scaled[s]
        if scaled[g] < 1.0:
            nl -= 1
            small[ns] = g
            ns += 1
    return accept, alias


@njit(fastmath=True, inline="always")
def _pair(l1, work, syn1, word, label, alpha, sig, softplus):  # pragma: no cover (compiled)
    """One SGD step of the output row ``word`` toward ``label`` (1 or 0) for input ``l1``; the
    input's gradient is added to ``work``. Returns the loss. Everything in float32."""
    row = syn1[word]
    f = np.float32(0.0)
    for k in range(l1.shape[0]):
        f += l1[k] * row[k]
    if f >= MAX_EXP:
        p = np.float32(1.0)
    elif f <= -MAX_EXP:
        p = np.float32(0.0)
    else:
        p = sig[int((f + MAX_EXP) * (TABLE_SIZE / MAX_EXP / 2))]
    g = (label - p) * alpha
    z = f if label else -f  # the logit of the right answer
    if z >= MAX_EXP:
        loss = np.float32(0.0)
    elif z <= -MAX_EXP:
        loss = -z
    else:
        loss = softplus[int((MAX_EXP - z) * (TABLE_SIZE / MAX_EXP / 2))]
    for k in range(l1.shape[0]):
        work[k] += g * row[k]
        row[k] += g * l1[k]
    return loss


@njit(fastmath=True, inline="always")
def _example(state, l1, work, syn1, centre, accept, alias, alpha, negative, sig, softplus):  # pragma: no cover
    """The positive step toward ``centre`` and ``negative`` noise steps for input ``l1``, the input's
    gradient summed into ``work`` (zeroed here). Returns the generator's state and the loss."""
    work[:] = 0.0
    loss = _pair(l1, work, syn1, centre, np.float32(1.0), alpha, sig, softplus)
    for _ in range(negative):
        state, word = _noise_word(state, accept, alias)
        if word != centre:
            loss += _pair(l1, work, syn1, word, np.float32(0.0), alpha, sig, softplus)
    return state, loss


@njit(nogil=True, fastmath=True, cache=True)
def train_sentences(tokens, offsets, s_lo, s_hi, key, first, syn0, syn1, accept, alias, keep, sig, softplus,
                    alpha0, alpha1, window, negative, sg):  # pragma: no cover (compiled)
    """Train sentences ``s_lo`` to ``s_hi`` (sentence ``s`` is ``tokens[offsets[s]:offsets[s + 1]]``)
    without the GIL, so that threads can share a job; the learning rate falls linearly from
    ``alpha0`` to ``alpha1`` over the job's tokens. Sentence ``s`` is sentence ``first + s`` of the
    epoch whose key is ``key`` (see :func:`epoch_seed`). ``keep``: subsampling thresholds (2**32:
    always kept); ``accept``, ``alias``: the noise distribution (:func:`alias_table`). Returns the
    loss and the number of updates (pairs in skip-gram, centre words in CBOW)."""
    dim = syn0.shape[1]
    n_tokens = max(tokens.shape[0], 1)
    longest = 0
    for s in range(s_lo, s_hi):
        longest = max(longest, offsets[s + 1] - offsets[s])
    buf = np.empty(longest, np.int32)
    work = np.empty(dim, np.float32)
    neu1 = np.empty(dim, np.float32)
    loss, count = 0.0, 0
    for s in range(s_lo, s_hi):
        alpha = np.float32(alpha0 + (alpha1 - alpha0) * (offsets[s] / n_tokens))
        state = _mix(key + uint64(GOLDEN) * uint64(first + s))
        n = 0
        for i in range(offsets[s], offsets[s + 1]):
            w = tokens[i]
            if keep[w] < uint64(1 << 32):
                state, r = _next(state)
                if r >= keep[w]:
                    continue
            buf[n] = w
            n += 1
        for pos in range(n):
            state, r = _next(state)
            reach = window - np.int64(r % uint64(window))
            lo, hi = max(0, pos - reach), min(n, pos + reach + 1)
            centre = buf[pos]
            if sg:
                for j in range(lo, hi):
                    if j == pos:
                        continue
                    l1 = syn0[buf[j]]
                    state, step_loss = _example(state, l1, work, syn1, centre, accept, alias, alpha, negative,
                                                sig, softplus)
                    loss += step_loss
                    for k in range(dim):
                        l1[k] += work[k]
                    count += 1
            else:
                if hi - lo < 2:
                    continue
                neu1[:] = 0.0
                for j in range(lo, hi):
                    if j != pos:
                        row = syn0[buf[j]]
                        for k in range(dim):
                            neu1[k] += row[k]
                inv = np.float32(1.0 / (hi - lo - 1))
                for k in range(dim):
                    neu1[k] *= inv
                state, step_loss = _example(state, neu1, work, syn1, centre, accept, alias, alpha, negative,
                                            sig, softplus)
                loss += step_loss
                for j in range(lo, hi):
                    if j != pos:
                        row = syn0[buf[j]]
                        for k in range(dim):
                            row[k] += work[k]
                count += 1
    return loss, count
