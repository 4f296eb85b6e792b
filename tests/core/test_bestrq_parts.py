"""BEST-RQ building blocks: log-mel features, the random-projection quantiser and the loss."""

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from multissl.core.losses.bestrq import bestrq_loss
from multissl.core.quantizer import RandomProjectionQuantizer
from multissl.modalities.audio.logmel import frame_count, log_mel, normalize_frames

CONV = [(10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2)]  # wav2vec2 conv encoder (kernel, stride)


def conv_frames(n: int) -> int:
    for k, s in CONV:
        n = (n - k) // s + 1
    return n


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """Real speech: espeak-ng's rendering of Genesis 1:1, decoded and resampled to 16 kHz float32."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    path = tmp_path_factory.mktemp("speech") / "genesis.wav"
    subprocess.run(
        ["espeak-ng", "-w", str(path), "In the beginning God created the heaven and the earth."],
        check=True,
        capture_output=True,
    )
    wav, sr = sf.read(path, dtype="float32")
    wav = soxr.resample(wav, sr, 16000).astype(np.float32)
    assert wav.ndim == 1 and len(wav) > 16000 and np.abs(wav).max() > 0.1
    return wav


# --- log-mel -------------------------------------------------------------------------------------------


def test_frame_count_matches_conv_encoder():
    convs = torch.nn.Sequential(*(torch.nn.Conv1d(1, 1, k, s) for k, s in CONV))
    for n in (400, 401, 719, 720, 1039, 1040, 16000, 16001, 47266, 123457):
        assert frame_count(n) == conv_frames(n), n
        with torch.no_grad():
            assert convs(torch.zeros(1, 1, n)).shape[-1] == frame_count(n), n
        t = frame_count(n)
        # the last window lies inside the waveform and one more would not fit: log_mel never pads here
        assert 320 * (t - 1) + 400 <= n < 320 * t + 400
    assert frame_count(399) == 0 and frame_count(0) == 0


def test_log_mel_matches_transformers_reference_on_speech(speech):
    n = frame_count(len(speech))
    fb = mel_filter_bank(201, 80, 0.0, 8000.0, 16000, norm=None, mel_scale="htk")
    ref = spectrogram(
        speech, window_function(400, "hann"), 400, 320, power=2.0, center=False,
        mel_filters=fb, mel_floor=1e-10, log_mel="log",
    ).T  # (frames, 80)
    out = log_mel(torch.from_numpy(speech)[None], n)
    assert out.shape == (1, n, 80) and out.dtype == torch.float32
    out = out[0].numpy()
    assert ref.shape == out.shape
    assert ref.max() - ref.min() > 20  # a real dynamic range, not a degenerate signal
    # float32 FFT against numpy's float64: ~1e-4 relative at worst (quiet bands of loud frames), far less typically
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)
    assert np.median(np.abs(out - ref) / np.abs(ref)) < 1e-6


def test_log_mel_frame_t_uses_samples_320t_to_320t_plus_400(speech):
    wav = torch.from_numpy(speech[:16000])[None]
    base = log_mel(wav, 49)
    # periodic Hann: w[0] == 0, so the first sample of a window has no weight; frame 48 ends at 15760
    for p, expected in ((1000, {2, 3}), (0, set()), (1, {0}), (399, {0, 1}), (400, {1}), (15759, {48}), (15760, set())):
        bumped = wav.clone()
        bumped[0, p] += 0.5
        changed = (log_mel(bumped, 49) - base).abs().amax(-1)[0] > 1e-6
        assert set(changed.nonzero().flatten().tolist()) == expected, p


def test_log_mel_pads_short_and_ignores_extra_samples(speech):
    wav = torch.from_numpy(speech[4000:5000])[None]  # 1000 samples: 2 whole windows
    short = log_mel(wav, 5)
    padded = log_mel(torch.cat([wav, torch.zeros(1, 1000)], 1), 5)
    assert short.shape == (1, 5, 80)
    torch.testing.assert_close(short, padded, rtol=0, atol=0)
    assert torch.all(short[0, 4] == float(np.log(1e-10)))  # window [1280, 1680) is all padding
    assert short[0, :2].mean() > -10
    torch.testing.assert_close(log_mel(wav, 2), log_mel(wav[:, :720], 2), rtol=0, atol=0)
    assert log_mel(wav, 0).shape == (1, 0, 80)


def test_log_mel_batch_and_bf16_autocast(speech):
    a = torch.from_numpy(speech[:8000])
    b = torch.from_numpy(speech[8000:16000]) * 0.3
    batch = log_mel(torch.stack([a, b]), 24)
    torch.testing.assert_close(batch[0], log_mel(a[None], 24)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch[1], log_mel(b[None], 24)[0], rtol=1e-5, atol=1e-5)
    # a gain of 0.3 shifts every log power above the floor by 2 log(0.3)
    loud = log_mel(torch.from_numpy(speech[8000:16000])[None], 24)[0]
    above = loud > np.log(1e-10) + 4
    assert above.float().mean() > 0.8
    torch.testing.assert_close(batch[1][above], loud[above] + 2 * float(np.log(0.3)), rtol=1e-4, atol=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = log_mel(torch.stack([a, b]).bfloat16().float(), 24)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, log_mel(torch.stack([a, b]).bfloat16().float(), 24), rtol=0, atol=0)


def test_normalize_frames_uses_only_real_frames():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3, generator=g) * torch.tensor([1.0, 4.0, 0.1]) + torch.tensor([5.0, -2.0, 30.0])
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 4:] = True
    x[1, 4:] = float("nan")  # padding content must not leak in
    y = normalize_frames(x, pad)
    assert torch.isfinite(y).all() and torch.all(y[1, 4:] == 0)
    for b, t in ((0, 7), (1, 4)):
        real = x[b, :t].double()
        expected = (real - real.mean(0)) / torch.sqrt(real.var(0, unbiased=False) + 1e-5)
        torch.testing.assert_close(y[b, :t].double(), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(normalize_frames(x[b : b + 1, :t])[0], y[b, :t], rtol=1e-5, atol=1e-5)
    assert torch.all(normalize_frames(x, torch.ones(2, 7, dtype=torch.bool)) == 0)
    assert normalize_frames(x.bfloat16(), pad).dtype == torch.bfloat16


# --- quantiser -----------------------------------------------------------------------------------------


def test_quantizer_deterministic_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    q1 = RandomProjectionQuantizer(20, code_dim=8, codebook_size=64, codebooks=2, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # the global RNG must not matter either
    q2 = RandomProjectionQuantizer(20, code_dim=8, codebook_size=64, codebooks=2, seed=3)
    q3 = RandomProjectionQuantizer(20, code_dim=8, codebook_size=64, codebooks=2, seed=4)
    assert torch.equal(q1.projection, q2.projection) and torch.equal(q1.codebook, q2.codebook)
    assert not torch.equal(q1.projection, q3.projection) and not torch.equal(q1.codebook, q3.codebook)
    x = torch.randn(200, 20, generator=torch.Generator().manual_seed(1))
    assert torch.equal(q1(x), q2(x)) and not torch.equal(q1(x), q3(x))
    # shapes, init statistics, normalised codebook, frozen
    assert q1.projection.shape == (2, 20, 8) and q1.codebook.shape == (2, 64, 8)
    torch.testing.assert_close(q1.codebook.norm(dim=-1), torch.ones(2, 64))
    big = RandomProjectionQuantizer(300, code_dim=16, codebook_size=8)
    assert abs(big.projection.std().item() - (2 / 316) ** 0.5) < 0.005
    assert list(q1.parameters()) == []


def test_quantizer_state_dict_round_trip():
    q = RandomProjectionQuantizer(12, code_dim=4, codebook_size=32, codebooks=3, seed=0)
    sd = q.state_dict()
    assert set(sd) == {"projection", "codebook"}
    other = RandomProjectionQuantizer(12, code_dim=4, codebook_size=32, codebooks=3, seed=9)
    x = torch.randn(100, 12, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(other(x), q(x))
    other.load_state_dict(sd)
    assert torch.equal(other(x), q(x))


def test_quantizer_codes_equal_numpy_brute_force_and_shapes():
    q = RandomProjectionQuantizer(10, code_dim=6, codebook_size=50, codebooks=3, seed=5)
    x = torch.randn(4, 9, 10, generator=torch.Generator().manual_seed(3))
    codes = q(x, chunk=7)  # chunking must not change anything
    assert codes.shape == (4, 9, 3) and codes.dtype == torch.long
    assert torch.equal(codes, q(x))
    xs, proj, book = x.reshape(-1, 10).double().numpy(), q.projection.double().numpy(), q.codebook.double().numpy()
    for c in range(3):
        z = xs @ proj[c]
        z /= np.linalg.norm(z, axis=-1, keepdims=True)
        dist = ((z[:, None, :] - book[c][None]) ** 2).sum(-1)  # (36, 50)
        np.testing.assert_array_equal(codes[..., c].reshape(-1).numpy(), dist.argmin(-1))
    assert len(set(codes[..., 0].flatten().tolist())) > 5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(q(x), codes)
    assert q(torch.zeros(0, 10)).shape == (0, 3)


def test_quantizer_spreads_codes_on_real_speech(speech):
    wav = torch.from_numpy(speech)[None]
    feats = normalize_frames(log_mel(wav, frame_count(wav.shape[1])))
    codes = RandomProjectionQuantizer(80, code_dim=16, codebook_size=512, seed=0)(feats)[0, :, 0]
    n = codes.numel()
    assert n == frame_count(len(speech)) > 100
    assert codes.unique().numel() >= 20
    assert torch.bincount(codes).max().item() < 0.3 * n  # no code swallows the utterance


# --- loss ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codebooks", [1, 3])
def test_bestrq_loss_is_mean_cross_entropy_over_codebooks(codebooks):
    g = torch.Generator().manual_seed(codebooks)
    logits = (torch.randn(6, codebooks, 11, generator=g) * 3).requires_grad_()
    codes = torch.randint(0, 11, (6, codebooks), generator=g)
    loss = bestrq_loss(logits, codes)
    assert loss.shape == (6,) and loss.dtype == torch.float32
    by_hand = sum(F.cross_entropy(logits[:, c], codes[:, c], reduction="none") for c in range(codebooks)) / codebooks
    torch.testing.assert_close(loss, by_hand)
    manual = -torch.log_softmax(logits.double(), -1).gather(-1, codes[..., None])[..., 0].mean(-1)
    torch.testing.assert_close(loss.double(), manual, rtol=1e-6, atol=1e-6)
    loss.mean().backward()
    expected = (torch.softmax(logits.detach(), -1) - F.one_hot(codes, 11)) / (6 * codebooks)
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-6)
    assert bestrq_loss(logits.detach().bfloat16(), codes).dtype == torch.float32
