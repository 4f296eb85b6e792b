"""Speech data: find recordings (folders, manifests, ``datasets`` folders), check them, decode with
soundfile, down-mix, resample with soxr, normalise, crop, and batch with frame-level padding and
masks. A bad file is skipped with a warning naming it (or, with ``data.strict``, stops the run)."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multissl.data.config import DataConfig
from multissl.data.masking import MaskConfig, sample_mask
from multissl.data.media import MediaDataset, MediaFiles, build_media_dataset
from multissl.data.seeds import example_rng
from multissl.data.streams import SeededStream
from multissl.errors import RecipeError
from multissl.modalities.audio.model import AUDIO_EXTENSIONS, AudioConfig

log = logging.getLogger(__name__)

MANIFEST_EXTENSIONS = (".tsv", ".csv", ".jsonl", ".json")


class BadAudioError(RecipeError):
    """A file could not be used and ``data.strict`` is set."""


@dataclass(frozen=True)
class Clip:
    """One recording: where it is and what ``soundfile`` says about it."""

    name: str
    """Path, or ``dataset[row]`` for in-memory files."""

    frames: int
    """Length in frames at the file's own rate (-1: unknown until read)."""

    rate: int
    """The file's sample rate (0: unknown until read)."""

    data: bytes | None = None
    """The encoded file, for rows of a ``datasets`` dataset."""

    channels: int = 0
    """Channels in the file (0: unknown until read)."""

    def source(self) -> Any:
        return io.BytesIO(self.data) if self.data is not None else self.name

    def samples(self, rate: int) -> int:
        """Length after resampling to ``rate``."""
        return self.frames if self.rate == rate else int(self.frames * rate / self.rate)


AUDIO_FILES = MediaFiles("audio", "audio files", "files", AUDIO_EXTENSIONS, "data.audio_column",
                         lambda name, data: Clip(name, -1, 0, data), BadAudioError,
                         lambda path, column: _listing(path, column))


def read_audio(source: Any, rate: int = 16000, start: float = 0.0, seconds: float | None = None) -> np.ndarray:
    """Decode ``source`` (path or file object) to mono float32 at ``rate``; optionally only the window
    of ``seconds`` from ``start`` (seconds), so an hour-long file is not read whole.

    >>> read_audio("speech.flac").shape  # doctest: +SKIP
    (27040,)
    """
    import soundfile as sf
    import soxr

    with sf.SoundFile(source) as f:
        sr = f.samplerate
        if start:
            f.seek(min(int(start * sr), f.frames))
        n = -1 if seconds is None else int(math.ceil(seconds * sr)) + 1
        data = f.read(n, dtype="float32", always_2d=True)
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != rate:
        wav = soxr.resample(wav, sr, rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(wav, dtype=np.float32)


def normalize(wav: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance (silence stays zero), as ``Wav2Vec2FeatureExtractor`` does."""
    return ((wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)).astype(np.float32)


# --- finding and checking files ------------------------------------------------------------------

def find_audio(spec: str, column: str = "audio") -> list[Clip]:
    """Clips named by ``spec``: audio files, folders (recursive), manifests (tsv/csv/jsonl with a path
    column and an optional ``duration`` in seconds, or fairseq's tsv whose first line is the root
    folder) and ``datasets`` folders saved with ``save_to_disk``; several separated by commas."""
    return AUDIO_FILES.find(spec, column)


def _listing(path: Path, column: str) -> list[Clip] | None:
    return _from_manifest(path, column) if path.suffix.lower() in MANIFEST_EXTENSIONS else None


def _from_manifest(path: Path, column: str) -> list[Clip]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if path.suffix == ".tsv" and lines and "\t" not in lines[0] and Path(lines[0]).is_dir():
        root = Path(lines[0])  # fairseq: root, then "relative/path<TAB>frames" (frames at 16 kHz)
        rows = [ln.split("\t") for ln in lines[1:] if ln.strip()]
        return [Clip(str(root / r[0]), int(r[1]) if len(r) > 1 else -1, 16000 if len(r) > 1 else 0) for r in rows]
    if path.suffix in (".jsonl", ".json"):
        rows = [json.loads(ln) for ln in lines if ln.strip()] if path.suffix == ".jsonl" else json.loads(text)
    else:
        rows = list(csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix == ".tsv" else ","))
    key = next((k for k in (column, "path", "audio", "file") if rows and k in rows[0]), None)
    if key is None:
        raise RecipeError(f"data.path: {path}: no {column!r} or 'path' column")
    clips = []
    for r in rows:
        f = Path(r[key]) if Path(r[key]).is_absolute() else path.parent / r[key]
        dur = r.get("duration")
        clips.append(Clip(str(f), int(float(dur) * 16000), 16000) if dur not in (None, "") else Clip(str(f), -1, 0))
    return clips


def check(clip: Clip, shortest: int, rate: int) -> tuple[Clip | None, str]:
    """(the clip with its length and rate filled in, "") or (None, why it cannot be used)."""
    import soundfile as sf

    if clip.rate and clip.frames >= 0:
        ok = clip.samples(rate) >= shortest
        return (clip, "") if ok else (None, f"shorter than {shortest} samples at {rate} Hz")
    try:
        info = sf.info(clip.source())
    except Exception as e:  # soundfile raises several types for unreadable files
        return None, f"unreadable ({str(e).splitlines()[0][:120]})"
    if info.frames <= 0:
        return None, "empty"
    clip = Clip(clip.name, int(info.frames), int(info.samplerate), clip.data, int(info.channels))
    if clip.samples(rate) < shortest:
        return None, f"shorter than {shortest} samples at {rate} Hz ({info.frames} at {info.samplerate} Hz)"
    return clip, ""


def scan(clips: list[Clip], cfg: AudioConfig, strict: bool = False) -> tuple[list[Clip], list[tuple[str, str]]]:
    """(usable clips with lengths, [(name, problem)]); ``strict`` raises at the first problem."""
    return AUDIO_FILES.scan(clips, partial(check, shortest=cfg.shortest, rate=cfg.sample_rate), strict)


def scan_report(good: list[Clip], bad: list[tuple[str, str]], rate: int) -> str:
    """A plain-text summary of :func:`scan`: durations, sample rates, channels, and each bad file."""
    from collections import Counter

    secs = np.array([c.samples(rate) / rate for c in good]) if good else np.zeros(1)
    lines = [f"usable files: {len(good)}   skipped: {len(bad)}",
             f"total: {secs.sum() / 3600:.2f} h   per file: min {secs.min():.2f} s, median {np.median(secs):.2f} s, "
             f"max {secs.max():.2f} s",
             "sample rates: " + ", ".join(f"{r} Hz x{n}" for r, n in sorted(Counter(c.rate for c in good).items())),
             "channels: " + ", ".join(f"{ch} x{n}" for ch, n in sorted(Counter(c.channels for c in good).items()))]
    lines += [f"skipped {name}: {why}" for name, why in bad]
    return "\n".join(lines)


# --- the dataset and the collator -----------------------------------------------------------------

def load_clip(c: Clip, cfg: AudioConfig, rng: np.random.Generator | None = None, normalized: bool = True
              ) -> np.ndarray:
    """A checked clip as the model sees it: resampled, a random window of at most ``max_samples`` when
    ``rng`` is given (else the start), normalised (unless ``normalized`` is False: views normalise each
    view after their gain and mixing). Only the window is read from the file."""
    n, start = c.samples(cfg.sample_rate), 0.0
    seconds = None
    if n > cfg.max_samples:
        offset = int(rng.integers(0, n - cfg.max_samples + 1)) if rng is not None else 0
        start, seconds = offset / cfg.sample_rate, cfg.max_samples / cfg.sample_rate
    wav = read_audio(c.source(), cfg.sample_rate, start, seconds)[: cfg.max_samples]
    if len(wav) < cfg.shortest:
        raise ValueError(f"decoded to {len(wav)} samples")
    if not np.isfinite(wav).all():  # float files can hold NaN or inf; they would poison the loss
        raise ValueError("holds NaN or infinite samples")
    return normalize(wav) if cfg.normalize and normalized else wav


class AudioDataset(MediaDataset):
    """Decoded, resampled, normalised (unless ``normalized`` is False) and randomly cropped waveforms.
    ``lengths`` lets the Trainer batch similar lengths together."""

    key = "input_values"
    files = AUDIO_FILES

    def __init__(self, clips: list[Clip], cfg: AudioConfig, seed: int, strict: bool = False, normalized: bool = True):
        super().__init__(clips, seed, strict)
        self.cfg, self.clips, self.normalized = cfg, clips, normalized
        self.lengths = [min(c.samples(cfg.sample_rate), cfg.max_samples) for c in clips]

    def load(self, i: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Clip ``i`` as the model sees it (a random window when it is too long and ``rng`` is given)."""
        return load_clip(self.clips[i], self.cfg, rng, self.normalized)


def _streamed(clip: Clip, rng: np.random.Generator, cfg: AudioConfig, normalized: bool = True) -> dict[str, Any]:
    checked, why = check(clip, cfg.shortest, cfg.sample_rate)
    if checked is None:
        raise ValueError(why)
    return {"input_values": load_clip(checked, cfg, rng, normalized)}


def build_audio_dataset(data: DataConfig, cfg: AudioConfig, seed: int, normalized: bool = True
                        ) -> AudioDataset | SeededStream:
    """Find, check and wrap the recordings of ``data.path``; bad files are counted and named. With
    ``data.streaming`` nothing is scanned up front: files are checked as they are streamed.
    ``normalized`` False: the waveforms as decoded, for views (which normalise each view)."""
    return build_media_dataset(data, data.audio_column, AUDIO_FILES,
                               partial(check, shortest=cfg.shortest, rate=cfg.sample_rate),
                               lambda clips: AudioDataset(clips, cfg, seed, data.strict, normalized),
                               partial(_streamed, cfg=cfg, normalized=normalized), seed)


class AudioCollator:
    """Pads waveforms (zeros, with a sample-level attention mask) and makes ``M`` frame-level masks
    per sample over its real frames only.

    >>> c = AudioCollator(MaskConfig(kind="block", prob=0.5, length=5), AudioConfig(), clones=2)
    >>> b = c([{"input_values": np.ones(16000, np.float32), "seed": (0, 0, 0)}])
    >>> b["mask"].shape, int(b["mask"][0].sum())
    (torch.Size([2, 49]), 24)
    """

    def __init__(self, mask: MaskConfig, cfg: AudioConfig, clones: int = 1):
        self.mask, self.cfg, self.clones = mask, cfg, clones

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = [len(e["input_values"]) for e in examples]
        wav = np.zeros((len(examples), max(lengths)), dtype=np.float32)
        att = np.zeros(wav.shape, dtype=np.int64)
        for i, e in enumerate(examples):
            wav[i, : lengths[i]], att[i, : lengths[i]] = e["input_values"], 1
        frames = [max(0, self.cfg.frames(n)) for n in lengths]  # shorter than the receptive field: no frames
        masks = np.zeros((len(examples) * self.clones, max(frames)), dtype=bool)
        for i, e in enumerate(examples):
            rng = example_rng((*e["seed"], 1))  # stream 1: masks; the crop used the base stream
            for c in range(self.clones):
                masks[i * self.clones + c, : frames[i]] = sample_mask(self.mask, (frames[i],), rng)
        return {"inputs": {"input_values": torch.from_numpy(wav), "attention_mask": torch.from_numpy(att)},
                "mask": torch.from_numpy(masks)}
