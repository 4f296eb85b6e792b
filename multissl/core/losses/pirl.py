"""PIRL's loss (Misra & van der Maaten 2019, "Self-Supervised Learning of Pretext-Invariant
Representations", arXiv 1912.01991, section 3, eq. 2-5): the representation of an image and of its
jigsaw-transformed version must match, each contrasted by noise-contrastive estimation (NCE) against
negatives from a memory bank of earlier representations of other images.

With s the cosine similarity, tau the temperature, N negatives and |D| images (uniform noise),
``h(a, b) = exp(s(a, b) / tau) / (exp(s(a, b) / tau) + N / |D|)`` (eq. 3) is the probability that (a, b)
is a positive pair, and
``L_NCE(m_I, x) = -log h(m_I, x) - sum_{I' in negatives} log(1 - h(x, m_I'))`` (eq. 4).
The loss (eq. 5) is ``lambda L_NCE(m_I, g(v_It)) + (1 - lambda) L_NCE(m_I, f(v_I))`` with m_I the
image's memory-bank entry, f and g the heads on the image and on its transform; lambda 0.5, tau 0.07.
The memory bank is passed in and returned updated, never kept here.

Eq. 3 as printed scores a pair by the unnormalised ``exp(s / tau)``. The memory-bank NCE PIRL builds on
(Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", arXiv
1805.01978, eq. 5-6) and the authors' own implementation score it by the model's probability
``exp(s / tau) / Z`` with the partition function estimated once, from the first batch, as
``Z = |D| mean exp(s / tau)``; the noise term then reads ``N Z / |D| = N mean exp(s / tau)``
(``normaliser`` below, from :func:`pirl_normaliser`). Without it, at tau 0.07 and N / |D| well below 1,
every pair with a positive similarity counts as a match: the positive term is satisfied at once and the
negatives' term, which pushes every representation away from every bank entry, dominates the gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _nce(positive: torch.Tensor, x: torch.Tensor, negatives: torch.Tensor, temperature: float,
         log_noise: float) -> torch.Tensor:
    """Per-sample L_NCE(positive, x) (eq. 4) with ``log_noise = log(N / |D|)``; inputs normalised."""
    # log h = s/tau - log(exp(s/tau) + N/|D|); log(1 - h) = log(N/|D|) - log(exp(s/tau) + N/|D|)
    noise = torch.tensor(log_noise, device=x.device)
    s_pos = (positive * x).sum(-1) / temperature
    log_h = s_pos - torch.logaddexp(s_pos, noise)
    with torch.autocast(device_type=x.device.type, enabled=False):  # float32 products even under autocast
        s_neg = torch.einsum("bd,bnd->bn", x, negatives) / temperature
    log_not_h = noise - torch.logaddexp(s_neg, noise)
    return -log_h - log_not_h.sum(-1)


def pirl_loss(
    image_features: torch.Tensor,
    transformed_features: torch.Tensor,
    memory: torch.Tensor,
    indices: torch.Tensor,
    negative_indices: torch.Tensor,
    temperature: float = 0.07,
    weight: float = 0.5,
    normaliser: float = 0.0,
) -> torch.Tensor:
    """The PIRL loss (eq. 5), averaged over the batch: ``image_features`` f(v_I) (B, D) of the images,
    ``transformed_features`` g(v_It) (B, D) of their jigsaw transforms, the memory bank ``memory``
    (|D|, D), the images' rows in it ``indices`` (B,), and the negatives' rows ``negative_indices``
    (B, N), drawn by the caller uniformly from the other images. ``weight`` is lambda. ``normaliser`` is
    Z / |D|, the partition function over the data set's size (:func:`pirl_normaliser`), so that the noise
    term is ``N * normaliser``; 0: Z = 1, eq. 3 as printed (noise ``N / |D|``). Memory entries are
    constants; all vectors are l2-normalised here. Computed in float32; returns a scalar.

    >>> memory = torch.eye(3)
    >>> x = torch.tensor([[1.0, 0.0, 0.0]])
    >>> # h = e / (e + 2/3) for the positive, 1 / (1 + 2/3) for each negative, in both terms
    >>> round(pirl_loss(x, x, memory, torch.tensor([0]), torch.tensor([[1, 2]]), temperature=1.0).item(), 4)
    2.0519
    """
    if image_features.ndim != 2 or transformed_features.shape != image_features.shape:
        raise ValueError(f"pirl: expected image and transformed features (B, D), got {tuple(image_features.shape)} "
                         f"and {tuple(transformed_features.shape)}")
    if memory.ndim != 2 or memory.shape[1] != image_features.shape[1]:
        raise ValueError(f"pirl: memory bank {tuple(memory.shape)} does not match features "
                         f"{tuple(image_features.shape)}")
    if indices.shape != image_features.shape[:1] or negative_indices.ndim != 2 \
            or negative_indices.shape[0] != image_features.shape[0]:
        raise ValueError(f"pirl: expected indices (B,) and negative indices (B, N), got {tuple(indices.shape)} and "
                         f"{tuple(negative_indices.shape)}")
    if temperature <= 0 or not 0.0 <= weight <= 1.0 or normaliser < 0:
        raise ValueError(f"pirl: temperature must be > 0, weight in [0, 1] and normaliser >= 0, got {temperature}, "
                         f"{weight} and {normaliser}")
    bank = F.normalize(memory.detach().float(), dim=-1)
    own, negatives = bank[indices], bank[negative_indices]
    noise = negative_indices.shape[1] * (normaliser if normaliser > 0 else 1.0 / memory.shape[0])
    log_noise = float(torch.tensor(noise).log())
    f = F.normalize(image_features.float(), dim=-1)
    g = F.normalize(transformed_features.float(), dim=-1)
    loss = weight * _nce(own, g, negatives, temperature, log_noise) \
        + (1.0 - weight) * _nce(own, f, negatives, temperature, log_noise)
    return loss.mean()


@torch.no_grad()
def pirl_normaliser(
    features: torch.Tensor, memory: torch.Tensor, indices: torch.Tensor, negative_indices: torch.Tensor,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Z / |D| as Wu et al. 2018 estimate it: ``mean exp(s / tau)`` over the pairs a batch scores, each
    sample's ``features`` (B, D) against its own bank row and its negatives' rows (B * (1 + N) values). A
    0-d float32 tensor; under data parallelism average it over the ranks.

    >>> round(float(pirl_normaliser(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), torch.tensor([[1], [0]]),
    ...                             temperature=1.0)), 4)  # (e + 1) / 2
    1.8591
    """
    rows = torch.cat([indices[:, None], negative_indices], dim=1)
    bank = F.normalize(memory.detach().float(), dim=-1)[rows]  # (B, 1 + N, D)
    with torch.autocast(device_type=bank.device.type, enabled=False):  # float32 products even under autocast
        s = torch.einsum("bd,bnd->bn", F.normalize(features.detach().float(), dim=-1), bank)
    return torch.exp(s / temperature).mean()


@torch.no_grad()
def pirl_memory_update(
    memory: torch.Tensor, indices: torch.Tensor, features: torch.Tensor, momentum: float = 0.5
) -> torch.Tensor:
    """The memory bank after the batch: rows ``indices`` (B,) become ``normalize(momentum * m + (1 -
    momentum) * normalize(f))`` for the images' new features ``features`` f(v_I) (B, D), an exponential
    moving average as in the paper (momentum 0.5, the value of the memory bank of Wu et al. 2018 that PIRL
    builds on). Returns a new bank; ``memory`` is not changed. Under data parallelism pass the indices
    and features gathered from every rank so that all ranks keep the same bank.

    >>> pirl_memory_update(torch.eye(2), torch.tensor([0]), torch.tensor([[0.0, 5.0]])).tolist()
    [[0.7071067690849304, 0.7071067690849304], [0.0, 1.0]]
    """
    if memory.ndim != 2 or features.ndim != 2 or features.shape[1] != memory.shape[1] \
            or indices.shape != features.shape[:1]:
        raise ValueError(f"pirl: expected memory (|D|, D), indices (B,) and features (B, D), got "
                         f"{tuple(memory.shape)}, {tuple(indices.shape)} and {tuple(features.shape)}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"pirl: memory momentum must be in [0, 1], got {momentum}")
    new = memory.clone()
    mixed = momentum * memory[indices].float() + (1.0 - momentum) * F.normalize(features.float(), dim=-1)
    new[indices] = F.normalize(mixed, dim=-1).to(memory.dtype)
    return new
