"""Skip-gram and CBOW with negative sampling on a CUDA GPU (``--device cuda``).

The algorithm is the CPU one: per-pair SGD steps, applied lock-free (Hogwild) by many workers at
once. Here a worker is a warp: its 32 lanes share the vector dimensions of each row (coalesced loads,
a shuffle reduction for the dot products) and it walks a slice of consecutive pairs in corpus order.
Summing the updates of a mini-batch instead (plain tensor ops with ``index_add_``) diverges once a
frequent word occurs hundreds of times in a batch, which is why these are kernels.

The random parts (subsampling, shrunk windows, pairs, noise words) are drawn with torch on the
device, per chunk of the corpus. The encoded corpus stays on the device after the first epoch while
it fits ``device_cache_words``; a larger corpus is streamed again every epoch. With
``simulate=True`` the kernels run in numba's CUDA simulator on the CPU (slow; for tests).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from numba import config as numba_config
from numba import cuda, float32

from multissl.word2vec.train import Word2VecConfig, Word2VecResult, jobs, keep_probabilities
from multissl.word2vec.vocab import Vocab, build_vocab, encode_blocks, sentence_blocks

NOISE_TABLE = 10_000_000  # the C tool's unigram table: drawing a noise word is one random index
MAX_DIM = 32 * 16  # lanes x values per lane held in registers
WARPS_PER_BLOCK = 4


def _noise_table(counts: np.ndarray, exponent: float, device: torch.device) -> torch.Tensor:
    p = counts.astype(np.float64) ** exponent
    sizes = np.floor(p / p.sum() * NOISE_TABLE).astype(np.int64)
    sizes[np.argmax(p)] += NOISE_TABLE - sizes.sum()  # rounding remainder to the commonest word
    words = torch.arange(len(counts), dtype=torch.int32, device=device)
    return torch.repeat_interleave(words, torch.from_numpy(sizes).to(device), output_size=NOISE_TABLE)


def window_pairs(ids: torch.Tensor, sent: torch.Tensor, window: int, gen: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre positions, context positions) within each centre's shrunk window and sentence, sorted
    by centre.

    >>> g = torch.Generator().manual_seed(0)
    >>> c, x = window_pairs(torch.arange(4), torch.tensor([0, 0, 0, 1]), 1, g)
    >>> list(zip(c.tolist(), x.tolist()))
    [(0, 1), (1, 0), (1, 2), (2, 1)]
    """
    n = ids.shape[0]
    reach = window - torch.randint(0, window, (n,), device=ids.device, generator=gen)
    pos = torch.arange(n, device=ids.device)
    centres, contexts = [pos[:0]], [pos[:0]]
    for d in range(1, min(window, n - 1) + 1):
        same = sent[:-d] == sent[d:]
        fwd = same & (reach[:-d] >= d)  # centre i, context i + d
        bwd = same & (reach[d:] >= d)  # centre i + d, context i
        centres += [pos[:-d][fwd], pos[d:][bwd]]
        contexts += [pos[d:][fwd], pos[:-d][bwd]]
    c, x = torch.cat(centres), torch.cat(contexts)
    order = torch.argsort(c * (2 * window + 2) + (x - c + window + 1), stable=True)
    return c[order], x[order]


# The kernels are module-level so that numba's CUDA simulator can swap in its own ``cuda`` module.
REGS = MAX_DIM // 32
FULL = 0xFFFFFFFF
SIMULATED = bool(numba_config.ENABLE_CUDASIM)

if SIMULATED:  # the simulator has no warp shuffles: sum through shared memory, one warp per block

    @cuda.jit(device=True)
    def _warp_sum(v, lane):  # pragma: no cover (device code)
        buf = cuda.shared.array(32, float32)
        cuda.syncthreads()
        buf[lane] = v
        cuda.syncthreads()
        s = float32(0.0)
        for i in range(32):
            s += buf[i]
        return s
else:

    @cuda.jit(device=True, inline=True)
    def _warp_sum(v, lane):  # pragma: no cover (device code)
        for off in (16, 8, 4, 2, 1):
            v += cuda.shfl_xor_sync(FULL, v, off)
        return v


@cuda.jit(device=True, inline=True)
def _step(l1, work, syn1, w, label, alpha, lane, dim):  # pragma: no cover (device code)
    f = float32(0.0)
    r = 0
    for d in range(lane, dim, 32):
        f += l1[r] * syn1[w, d]
        r += 1
    f = _warp_sum(f, lane)
    f = min(max(f, float32(-20.0)), float32(20.0))
    sig = float32(1.0) / (float32(1.0) + math.exp(-f))
    g = (label - sig) * alpha
    r = 0
    for d in range(lane, dim, 32):
        work[r] += g * syn1[w, d]
        cuda.atomic.add(syn1, (w, d), g * l1[r])
        r += 1
    return -math.log(sig + float32(1e-7)) if label > 0 else -math.log(float32(1.0) - sig + float32(1e-7))

@cuda.jit(fastmath=True)
def sg(inp, tgt, noise, syn0, syn1, alpha0, alpha1, per_warp, losses):  # pragma: no cover
    lane = cuda.threadIdx.x % 32
    warp = cuda.grid(1) // 32
    dim, n, neg = syn0.shape[1], inp.shape[0], noise.shape[1]
    l1 = cuda.local.array(REGS, float32)
    work = cuda.local.array(REGS, float32)
    loss = float32(0.0)
    for p in range(warp * per_warp, min(warp * per_warp + per_warp, n)):
        alpha = alpha0 + (alpha1 - alpha0) * p / n
        a, t = inp[p], tgt[p]
        r = 0
        for d in range(lane, dim, 32):
            l1[r] = syn0[a, d]
            work[r] = 0.0
            r += 1
        loss += _step(l1, work, syn1, t, float32(1.0), alpha, lane, dim)
        for k in range(neg):
            w = noise[p, k]
            if w != t:
                loss += _step(l1, work, syn1, w, float32(0.0), alpha, lane, dim)
        r = 0
        for d in range(lane, dim, 32):
            cuda.atomic.add(syn0, (a, d), work[r])
            r += 1
    if lane == 0 and warp < losses.shape[0]:
        losses[warp] = loss

@cuda.jit(fastmath=True)
def cbow(ids, ptr, ctx, noise, syn0, syn1, alpha0, alpha1, per_warp, losses, counts):  # pragma: no cover
    lane = cuda.threadIdx.x % 32
    warp = cuda.grid(1) // 32
    dim, n, neg = syn0.shape[1], ids.shape[0], noise.shape[1]
    l1 = cuda.local.array(REGS, float32)
    work = cuda.local.array(REGS, float32)
    loss = float32(0.0)
    done = 0
    for c in range(warp * per_warp, min(warp * per_warp + per_warp, n)):
        lo, hi = ptr[c], ptr[c + 1]
        if hi == lo:
            continue
        alpha = alpha0 + (alpha1 - alpha0) * c / n
        t = ids[c]
        inv = float32(1.0) / (hi - lo)
        r = 0
        for d in range(lane, dim, 32):
            s = float32(0.0)
            for j in range(lo, hi):
                s += syn0[ids[ctx[j]], d]
            l1[r] = s * inv
            work[r] = 0.0
            r += 1
        loss += _step(l1, work, syn1, t, float32(1.0), alpha, lane, dim)
        for k in range(neg):
            w = noise[c, k]
            if w != t:
                loss += _step(l1, work, syn1, w, float32(0.0), alpha, lane, dim)
        for j in range(lo, hi):
            a = ids[ctx[j]]
            r = 0
            for d in range(lane, dim, 32):
                cuda.atomic.add(syn0, (a, d), work[r])
                r += 1
        done += 1
    if lane == 0 and warp < losses.shape[0]:
        losses[warp] = loss
        counts[warp] = done


KERNELS = {"sg": sg, "cbow": cbow}


def _arr(t: torch.Tensor):
    """A torch tensor as the kernels take it: a CUDA array view, or (simulator) a numpy view."""
    if t.is_cuda:
        from numba import cuda

        return cuda.as_cuda_array(t.detach())
    return t.detach().numpy()


def train_word2vec_gpu(
    sentences: Callable[[], Iterable[list[str]]], cfg: Word2VecConfig, vocab: Vocab | None = None,
    progress: bool = True, chunk_words: int = 4_000_000, device_cache_words: int = 500_000_000,
    simulate: bool = False, warps: int = 65536,
) -> Word2VecResult:
    """Train on ``sentences()`` on the current CUDA device (see the module docstring).

    >>> r = train_word2vec_gpu(lambda: [["a", "b", "c"]] * 50, Word2VecConfig(min_count=1, dim=8))  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    cfg.validate()
    if cfg.dim > MAX_DIM:
        raise ValueError(f"--dim {cfg.dim}: the GPU kernels hold at most {MAX_DIM} dimensions")
    if simulate != SIMULATED:
        raise ValueError("simulate=True needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported, and only then")
    if not simulate and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu)")
    dev = torch.device("cpu" if simulate else "cuda")
    kernels = KERNELS
    t0 = time.perf_counter()
    vocab = vocab or build_vocab(sentences(), cfg.min_count, cfg.max_vocab_size)
    rng = np.random.default_rng(cfg.seed)
    syn0 = torch.from_numpy((rng.random((len(vocab), cfg.dim), dtype=np.float32) - 0.5) / cfg.dim).to(dev)
    syn1 = torch.zeros_like(syn0)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    table = _noise_table(vocab.counts, cfg.ns_exponent, dev)
    keep = torch.from_numpy(keep_probabilities(vocab.counts, cfg.sample)).to(dev)
    total = vocab.total_words * cfg.epochs
    cache: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    state = {"cached_words": 0, "cache_ok": True}
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    units = torch.zeros((), dtype=torch.float64, device=dev)
    done = 0
    bar = tqdm(total=total, unit="word", unit_scale=True, disable=not progress, desc="word2vec (cuda)")

    def chunks():
        if cache:
            yield from cache
            return
        for tokens, offsets, raw in jobs(encode_blocks(sentence_blocks(sentences()), vocab.lookup), chunk_words):
            sent = np.repeat(np.arange(len(offsets) - 1, dtype=np.int32), np.diff(offsets))
            item = (torch.from_numpy(tokens.astype(np.int32)).to(dev), torch.from_numpy(sent).to(dev), raw)
            state["cached_words"] += len(tokens)
            if state["cache_ok"] and state["cached_words"] <= device_cache_words:
                cache.append(item)
            else:
                state["cache_ok"] = False
                cache.clear()
            yield item

    max_warps = 4 if simulate else warps  # enough to fill the GPU; the simulator runs threads in Python

    def launch(kernel, n_units: int, *args):
        per_warp = max(1, -(-n_units // max_warps))
        warps = (n_units + per_warp - 1) // per_warp
        losses = torch.zeros(warps, dtype=torch.float32, device=dev)
        counts = torch.zeros(warps, dtype=torch.int32, device=dev)
        per_block = 1 if SIMULATED else WARPS_PER_BLOCK
        blocks = (warps + per_block - 1) // per_block
        extra = (_arr(losses), _arr(counts)) if kernel is kernels["cbow"] else (_arr(losses),)
        kernel[blocks, 32 * per_block](*args, per_warp, *extra)
        return losses.sum(dtype=torch.float64), (counts.sum(dtype=torch.float64) if len(extra) == 2 else n_units)

    for _epoch in range(cfg.epochs):
        for ids, sent, raw in chunks():
            a0 = max(cfg.min_alpha, cfg.alpha - (cfg.alpha - cfg.min_alpha) * done / total)
            a1 = max(cfg.min_alpha, cfg.alpha - (cfg.alpha - cfg.min_alpha) * (done + raw) / total)
            kept = torch.rand(ids.shape[0], device=dev, generator=gen) < keep[ids.long()]
            ids_k, sent_k = ids[kept], sent[kept]
            centre, context = window_pairs(ids_k, sent_k, cfg.window, gen)
            if centre.numel():
                n = centre.shape[0] if cfg.sg else ids_k.shape[0]
                noise = table[torch.randint(0, table.shape[0], (n, cfg.negative), device=dev, generator=gen)]
                if cfg.sg:
                    loss, count = launch(kernels["sg"], n, _arr(ids_k[context]), _arr(ids_k[centre]), _arr(noise),
                                         _arr(syn0), _arr(syn1), np.float32(a0), np.float32(a1))
                else:
                    ptr = torch.searchsorted(centre, torch.arange(n + 1, device=dev)).to(torch.int32)
                    loss, count = launch(kernels["cbow"], n, _arr(ids_k), _arr(ptr), _arr(context.to(torch.int32)),
                                         _arr(noise), _arr(syn0), _arr(syn1), np.float32(a0), np.float32(a1))
                loss_sum += loss
                units += count
            done += raw
            bar.update(raw)
            if progress:
                bar.set_postfix(lr=f"{a1:.5f}", loss=f"{float(loss_sum / units.clamp(min=1)):.4f}")
    bar.close()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    pairs = float(units)
    stats = {"words": float(done), "seconds": seconds, "words_per_second": done / max(seconds, 1e-9),
             "train_words_per_second": done / max(seconds, 1e-9), "loss_per_pair": float(loss_sum) / max(pairs, 1),
             "pairs": pairs}
    return Word2VecResult(vocab, syn0.cpu().numpy(), cfg, stats)
