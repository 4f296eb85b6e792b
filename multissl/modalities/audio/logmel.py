"""Log-mel features aligned to the frames of a wav2vec2-style conv encoder, for BEST-RQ targets.

BEST-RQ (Chiu et al. 2022, "Self-supervised learning with random-projection quantizer for speech
recognition", arXiv 2202.01855) quantises normalised 80-dimensional log-mel frames with a frozen random
projection and codebook; the codes are the labels the encoder predicts at masked frames. Here the labels
must line up one-to-one with the encoder's frames: the wav2vec2 conv stack (kernels 10,3,3,3,3,2,2,
strides 5,2,2,2,2,2,2) has a receptive field of 400 samples and a stride of 320, so its frame ``t`` sees
samples ``[320 t, 320 t + 400)``. :func:`log_mel` uses exactly that window for its frame ``t``, with no
centre padding.

Choices (all fixed, so the features are reproducible):

* window: periodic Hann of length ``n_fft`` (``torch.hann_window(n_fft, periodic=True)``, the same as
  ``transformers.audio_utils.window_function(n_fft, "hann")``);
* spectrum: power (``|STFT|**2``), one-sided, ``n_fft // 2 + 1`` bins;
* mel filter bank: ``transformers.audio_utils.mel_filter_bank`` with the HTK mel scale, 0 Hz to Nyquist,
  no area normalisation (``norm=None``), i.e. the ``torchaudio.transforms.MelSpectrogram`` defaults;
  built once per ``(sample_rate, n_fft, n_mels)`` and cached;
* log: ``log(max(x, 1e-10))`` (natural log with a floor, as ``spectrogram(..., mel_floor=1e-10,
  log_mel="log")``), so digital silence gives ``log(1e-10)`` instead of ``-inf``.

Everything is computed in float32 with autocast off, whatever the input dtype or autocast context.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from transformers.audio_utils import mel_filter_bank

LOG_FLOOR = 1e-10


def frame_count(num_samples: int, n_fft: int = 400, hop: int = 320) -> int:
    """Number of whole windows of ``n_fft`` samples, ``hop`` apart, in ``num_samples`` samples (0 if none).

    With the defaults this equals the frame count of the wav2vec2 conv encoder: applying
    ``floor((L - k) / s) + 1`` for its seven (kernel, stride) pairs telescopes to ``floor((n - 400) / 320) + 1``.

    >>> frame_count(16000)
    49
    """
    return max(0, (num_samples - n_fft) // hop + 1)


@functools.lru_cache(maxsize=16)
def _mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """HTK mel filter bank as a float32 (n_fft // 2 + 1, n_mels) CPU tensor, built once per setting."""
    fb = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=sample_rate / 2,
        sampling_rate=sample_rate,
        norm=None,
        mel_scale="htk",
    )
    return torch.from_numpy(np.asarray(fb, dtype=np.float32))


def log_mel(
    wav: torch.Tensor,
    frames: int,
    sample_rate: int = 16000,
    n_fft: int = 400,
    hop: int = 320,
    n_mels: int = 80,
) -> torch.Tensor:
    """Log-mel frames of ``wav`` (B, S): returns float32 (B, frames, n_mels); row ``t`` is the log of the
    mel-filtered power spectrum of the Hann-windowed samples ``[hop t, hop t + n_fft)``.

    Samples past the last window are ignored; if ``wav`` is too short for ``frames`` windows it is padded
    with zeros at the end (padded utterances in a batch give frames of ``log(1e-10)`` past their end;
    use :func:`normalize_frames` with the frame padding mask to leave them out). For BEST-RQ (Chiu et al.
    2022, arXiv 2202.01855) pass the encoder's frame count, so every encoder frame gets one feature row.

    >>> wav = torch.randn(2, 16000)
    >>> log_mel(wav, frame_count(16000)).shape
    torch.Size([2, 49, 80])
    """
    if wav.dim() != 2:
        raise ValueError(f"log_mel expects a (B, S) waveform, got shape {tuple(wav.shape)}")
    if frames < 0:
        raise ValueError(f"frames must be >= 0, got {frames}")
    with torch.autocast(device_type=wav.device.type, enabled=False):
        x = wav.float()
        if frames == 0:
            return x.new_zeros(x.shape[0], 0, n_mels)
        need = hop * (frames - 1) + n_fft
        if x.shape[1] < need:
            x = F.pad(x, (0, need - x.shape[1]))
        windows = x[:, :need].unfold(-1, n_fft, hop)  # (B, frames, n_fft), row t = samples [hop t, hop t + n_fft)
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float32, device=x.device)
        power = torch.fft.rfft(windows * window, n=n_fft).abs().square()  # (B, frames, n_fft // 2 + 1)
        mel = power @ _mel_filters(sample_rate, n_fft, n_mels).to(x.device)
        return mel.clamp_min(LOG_FLOOR).log()


def normalize_frames(x: torch.Tensor, pad: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit variance per feature over each utterance's real frames: ``x`` is (B, T, F),
    ``pad`` (B, T) is True at padding, which is left out of the statistics and set to zero in the output.

    BEST-RQ (Chiu et al. 2022, arXiv 2202.01855) normalises the features before the random projection so
    that the projection and codebook see inputs of a fixed scale. The paper uses global (dataset) statistics;
    this uses per-utterance statistics instead, which need no pass over the data beforehand and no stored
    state (at the cost of removing each utterance's own spectral offset, e.g. channel or loudness). The
    variance is the population one (divided by the number of real frames); an utterance with no real frame
    comes out all zeros. The result has the dtype of ``x`` (statistics are computed in float32).

    >>> y = normalize_frames(torch.randn(2, 6, 3) * 5 + 2)
    >>> bool(y.mean(1).abs().max() < 1e-5), bool((y.var(1, unbiased=False) - 1).abs().max() < 1e-3)
    (True, True)
    """
    if x.dim() != 3:
        raise ValueError(f"normalize_frames expects (B, T, F), got shape {tuple(x.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = x.float()
        if pad is None:
            valid = torch.ones(xf.shape[:2], dtype=torch.bool, device=x.device)
        else:
            if pad.shape != x.shape[:2]:
                raise ValueError(f"pad shape {tuple(pad.shape)} does not match frames {tuple(x.shape[:2])}")
            valid = ~pad.bool()
        valid = valid.unsqueeze(-1)  # (B, T, 1); where() so that non-finite padding cannot leak in
        n = valid.sum(1, keepdim=True).clamp_min(1).float()
        mean = torch.where(valid, xf, 0.0).sum(1, keepdim=True) / n
        centred = torch.where(valid, xf - mean, 0.0)
        var = centred.square().sum(1, keepdim=True) / n
        return (centred * torch.rsqrt(var + eps)).to(x.dtype)
