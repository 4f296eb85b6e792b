"""Speech views for objectives that compare views (BYOL for speech, as BYOL-A does for audio: Niizumi
et al. 2021, "BYOL for Audio"): random crops of each clip, a random gain, and mixing with another
clip of the batch, then each view normalised as the exported feature extractor normalises a clip.

The crop and the gain of an example are drawn from its own generator, and so are its mixing partner
and ratio; the partner's waveform, though, is whatever clip sits at that place in the batch, so with
``mix`` > 0 an example's views depend on its batch (BYOL-A mixes with clips of other batches, from a
queue). With ``mix: 0`` they depend on the example's seed only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from multissl.data.views import Inputs, ViewMaker

if TYPE_CHECKING:  # the model module names AudioViews as the adapter's views config
    from multissl.modalities.audio.model import AudioConfig


@dataclass
class AudioViews:
    """The recipe's ``views`` section for speech."""

    crops: int = 2
    """Views per clip, each a random crop."""

    crop_samples: int = 16000
    """Samples per crop (after resampling; 1 s at 16 kHz), at most ``adapter.max_samples``: the crops of a
    longer file come from its random window of ``max_samples``. Shorter clips are padded with zeros and
    an attention mask."""

    gain_db: float = 6.0
    """Each view is scaled by a gain drawn from [-gain_db, gain_db] dB. With ``adapter.normalize`` the
    normalisation undoes a gain alone: it then sets the loudness of a view against its mixing partner."""

    mix: float = 0.4
    """Each view is mixed with the same view of another clip of the batch, ``(1 - r) x + r partner``, the
    ratio r drawn from [0, mix] (BYOL-A's mixup ratio); 0: no mixing."""

    def validate(self, where: str = "views") -> None:
        if self.crops < 1:
            raise ValueError(f"{where}.crops must be >= 1, got {self.crops}")
        if self.crop_samples < 1:
            raise ValueError(f"{where}.crop_samples must be >= 1, got {self.crop_samples}")
        if self.gain_db < 0:
            raise ValueError(f"{where}.gain_db must be >= 0, got {self.gain_db}")
        if not 0 <= self.mix < 1:
            raise ValueError(f"{where}.mix must lie in [0, 1), got {self.mix}")


class SpeechViews(ViewMaker):
    """Views of waveforms (examples hold ``input_values``, a float32 clip as decoded, not normalised):
    each view is ``{"input_values": (B, crop_samples), "attention_mask": (B, crop_samples)}``.

    >>> from multissl.modalities.audio.model import AudioConfig
    >>> maker = SpeechViews(AudioViews(crops=3, crop_samples=8000), AudioConfig())
    >>> clips = [{"input_values": np.ones(12000, np.float32)}, {"input_values": np.ones(5000, np.float32)}]
    >>> views = maker(clips, [np.random.default_rng(0), np.random.default_rng(1)])
    >>> len(views), tuple(views[0]["input_values"].shape), views[0]["attention_mask"].sum(1).tolist()
    (3, (2, 8000), [8000, 5000])
    """

    def __init__(self, views: AudioViews, cfg: AudioConfig):
        if views.crop_samples < cfg.receptive_field:
            raise ValueError(f"views.crop_samples ({views.crop_samples}) is shorter than the conv receptive field "
                             f"({cfg.receptive_field} samples)")
        if views.crop_samples > cfg.max_samples:
            raise ValueError(f"views.crop_samples ({views.crop_samples}) is longer than adapter.max_samples "
                             f"({cfg.max_samples}), the longest clip a view is cut from")
        self.views, self.cfg = views, cfg
        self.global_views = views.crops

    def __call__(self, examples: list[dict[str, Any]], rngs: list[np.random.Generator]) -> list[Inputs]:
        from multissl.modalities.audio.data import normalize

        v, size, b = self.views, self.views.crop_samples, len(examples)
        wav = np.zeros((v.crops, b, size), dtype=np.float32)
        lengths = np.zeros(b, dtype=np.int64)
        partner = np.zeros((v.crops, b), dtype=np.int64)
        ratio = np.zeros((v.crops, b), dtype=np.float32)
        for i, (e, rng) in enumerate(zip(examples, rngs, strict=True)):
            clip = e["input_values"]
            lengths[i] = min(len(clip), size)
            for c in range(v.crops):  # every draw is made, used or not, in a fixed order
                start = int(rng.integers(0, max(len(clip) - size, 0) + 1))
                gain = 10.0 ** (rng.uniform(-v.gain_db, v.gain_db) / 20)
                wav[c, i, : lengths[i]] = clip[start : start + size] * np.float32(gain)
                # one uniform draw whatever the batch size (integers() may draw more for some bounds,
                # which would shift the example's later draws)
                other = min(int(rng.random() * (b - 1)), max(b - 2, 0))
                partner[c, i] = other + (other >= i) if b > 1 else i  # any clip of the batch but this one
                ratio[c, i] = rng.uniform(0, v.mix)
        if v.mix > 0 and b > 1:
            mixed = (1 - ratio[..., None]) * wav + ratio[..., None] * wav[np.arange(v.crops)[:, None], partner]
            wav = np.where(np.arange(size) < lengths[:, None], mixed, 0).astype(np.float32)
        if self.cfg.normalize:
            for c in range(v.crops):
                for i in range(b):
                    wav[c, i, : lengths[i]] = normalize(wav[c, i, : lengths[i]])
        attention = torch.from_numpy((np.arange(size)[None] < lengths[:, None]).astype(np.int64))
        return [{"input_values": torch.from_numpy(wav[c]), "attention_mask": attention.clone()}
                for c in range(v.crops)]

    def token_grids(self, inputs: dict[str, torch.Tensor]) -> tuple[int, list[tuple[int, ...]]]:
        tokens = max(0, int(self.cfg.frames(inputs["input_values"].shape[1])))
        lengths = inputs["attention_mask"].sum(1).tolist()
        return tokens, [(max(0, int(self.cfg.frames(n))),) for n in lengths]

    def picture(self, inputs: dict[str, torch.Tensor], i: int) -> np.ndarray:
        """The view's log-mel spectrogram (80 bands, 25 ms windows every 10 ms), bands as rows, floored
        80 dB under its peak (as spectrogram plots do), so digital silence does not take the colour range."""
        from multissl.modalities.audio.logmel import frame_count, log_mel

        n = int(inputs["attention_mask"][i].sum())
        hop = self.cfg.sample_rate // 100
        wav = inputs["input_values"][i : i + 1, :n]
        window = self.cfg.sample_rate // 40
        mel = log_mel(wav, frame_count(n, window, hop), self.cfg.sample_rate, window, hop)[0].T.numpy()
        return np.maximum(mel, mel.max() - 8 * np.log(10)) if mel.size else mel  # power: 80 dB = 10 ** 8
