"""Speech adapter: raw 16 kHz waveforms through a wav2vec2-style conv feature encoder (LayerNorm in
every conv layer), a feature projection and a grouped conv positional encoder, laid out like
``Data2VecAudioModel`` so that a trained encoder exports exactly. No ALiBi: HF cannot load it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from multissl.core.adapter import Modality, StudentView
from multissl.core.blocks import EncoderConfig
from multissl.core.decoder import Decoder1d, DecoderConfig
from multissl.core.hf_names import from_hf_names, pool_states, to_hf_names
from multissl.data.views import ViewCollator
from multissl.modalities.audio.views import AudioViews, SpeechViews

# multissl block tensor -> Data2VecAudio layer module
HF_BLOCK_NAMES = {
    "q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj", "out": "attention.out_proj",
    "norm1": "layer_norm", "fc1": "feed_forward.intermediate_dense", "fc2": "feed_forward.output_dense",
    "norm2": "final_layer_norm",
}
EXAMPLE_AUDIO = Path(__file__).resolve().parents[2] / "assets" / "speech.flac"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64")


@dataclass
class AudioConfig:
    """Speech-specific settings: the conv feature encoder, the conv positions and the input window."""

    sample_rate: int = 16000
    """Rate the model consumes; every file is resampled to it."""

    conv_dim: tuple[int, ...] = (512,) * 7
    """Channels of each conv layer of the feature encoder."""

    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    """Kernel of each conv layer (the defaults give a 400-sample, 25 ms receptive field)."""

    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    """Stride of each conv layer (the defaults give 320 samples per frame: 50 Hz at 16 kHz)."""

    pos_conv_depth: int = 5
    """Layers of the conv positional encoder."""

    pos_conv_kernel: int = 19
    """Kernel of each positional conv layer."""

    pos_conv_groups: int = 16
    """Groups of each positional conv layer (must divide encoder.dim)."""

    max_samples: int = 320000
    """Longer files are cropped to a random window of this many samples (after resampling)."""

    min_samples: int = 0
    """Shorter files are skipped; never less than the conv receptive field (0: the receptive field)."""

    normalize: bool = True
    """Zero mean, unit variance per utterance (as the exported feature extractor does)."""

    mask_embedding: bool | None = None
    """Learned vector for masked frames; None: yes for v1 (dense student), no for v2 (sparse)."""

    def validate(self, where: str = "audio") -> None:
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) > 0):
            raise ValueError(f"{where}.conv_dim, conv_kernel and conv_stride must have the same non-zero length")
        if self.max_samples < self.receptive_field:
            raise ValueError(f"{where}.max_samples ({self.max_samples}) is shorter than the conv receptive field "
                             f"({self.receptive_field} samples)")
        if self.pos_conv_kernel < 1 or self.pos_conv_depth < 0:
            raise ValueError(f"{where}.pos_conv_kernel must be >= 1 and pos_conv_depth >= 0")

    @property
    def receptive_field(self) -> int:
        """Samples that make one output frame."""
        field, jump = 1, 1
        for k, s in zip(self.conv_kernel, self.conv_stride, strict=True):
            field += (k - 1) * jump
            jump *= s
        return field

    @property
    def shortest(self) -> int:
        """Fewest samples a usable file has."""
        return max(self.min_samples, self.receptive_field)

    def frames(self, samples: torch.Tensor | int) -> torch.Tensor | int:
        """Frames the conv encoder makes from ``samples`` (HF's ``_get_feat_extract_output_lengths``).

        >>> AudioConfig().frames(16000)
        49
        """
        for k, s in zip(self.conv_kernel, self.conv_stride, strict=True):
            samples = (samples - k) // s + 1
        return samples


class ConvLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=False)
        self.layer_norm = nn.LayerNorm(out_dim)
        nn.init.kaiming_normal_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.layer_norm(self.conv(x).transpose(1, 2)).transpose(1, 2))


class AudioLocal(nn.Module):
    """Waveform (B, S) -> frames (B, T, D) and the frame padding mask from the sample one."""

    def __init__(self, cfg: AudioConfig, enc: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        dims = (1, *cfg.conv_dim)
        shapes = zip(dims[:-1], dims[1:], cfg.conv_kernel, cfg.conv_stride, strict=True)
        self.conv_layers = nn.ModuleList(ConvLayer(*shape) for shape in shapes)
        self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=enc.eps)
        self.projection = nn.Linear(cfg.conv_dim[-1], enc.dim)
        self.mask_embedding = nn.Parameter(torch.empty(enc.dim).uniform_()) if cfg.mask_embedding else None

    def reset_parameters_after_bert(self) -> None:
        # the reference keeps PyTorch's initialisation for the feature projection (and Kaiming for
        # the convs, which the BERT rule leaves alone)
        self.projection.reset_parameters()

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = inputs["input_values"][:, None]
        for layer in self.conv_layers:
            x = layer(x)
        x = self.projection(self.layer_norm(x.transpose(1, 2)))
        t = x.shape[1]
        if "attention_mask" in inputs:
            lengths = self.cfg.frames(inputs["attention_mask"].sum(-1))
            pad = torch.arange(t, device=x.device)[None] >= lengths[:, None]
        else:
            pad = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        return x, pad


class PosConvLayer(nn.Module):
    def __init__(self, cfg: AudioConfig, dim: int):
        super().__init__()
        k = cfg.pos_conv_kernel
        self.conv = nn.Conv1d(dim, dim, k, padding=k // 2, groups=cfg.pos_conv_groups)
        self.trim = 1 if k % 2 == 0 else 0  # an even kernel makes one frame too many

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.trim:
            x = x[:, :, : -self.trim]
        return F.gelu(F.layer_norm(x.transpose(1, 2), x.shape[1:2]).transpose(1, 2))


class AudioContext(nn.Module):
    """Conv positions added to the frames, then LayerNorm and dropout. Padded frames, and in sparse
    (v2) mode masked frames, are zeroed for the positional convs only, which see the full length."""

    def __init__(self, cfg: AudioConfig, enc: EncoderConfig):
        super().__init__()
        self.pos_conv = nn.ModuleList(PosConvLayer(cfg, enc.dim) for _ in range(cfg.pos_conv_depth))
        self.layer_norm = nn.LayerNorm(enc.dim, eps=enc.eps)
        self.dropout = nn.Dropout(enc.dropout)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        pos = x if mask is None else x.masked_fill(mask.unsqueeze(-1), 0.0)
        pos = pos.transpose(1, 2)
        for layer in self.pos_conv:
            pos = layer(pos)
        return self.dropout(self.layer_norm(x + pos.transpose(1, 2)))


class Audio(Modality):
    name = "audio"
    config_class = AudioConfig
    views_class = AudioViews
    input_extensions = AUDIO_EXTENSIONS
    item_view = "audio"
    padding_exact = False
    hf_untrained = ("masked_spec_embed",)

    def build_local(self, enc: EncoderConfig) -> nn.Module:
        return AudioLocal(self.cfg, enc)

    def build_context(self, enc: EncoderConfig) -> nn.Module:
        if enc.dim % self.cfg.pos_conv_groups:
            raise ValueError(f"adapter.pos_conv_groups ({self.cfg.pos_conv_groups}) must divide encoder.dim "
                             f"({enc.dim})")
        return AudioContext(self.cfg, enc)

    def build_decoder(self, cfg: DecoderConfig, dim: int) -> nn.Module:
        return Decoder1d(cfg, dim)

    def token_signal(self, inputs: dict[str, Any], tokens: int) -> torch.Tensor:
        """The log-mel frame (80 bands, 25 ms windows) under each conv frame, normalised over each
        utterance's real frames: (B, frames, 80). The window of frame t starts where the conv encoder's
        receptive field does (20 ms steps)."""
        from multissl.modalities.audio.logmel import log_mel, normalize_frames

        wav = inputs["input_values"]
        mel = log_mel(wav, tokens, self.cfg.sample_rate)
        if "attention_mask" in inputs:
            lengths = self.cfg.frames(inputs["attention_mask"].sum(-1))
            pad = torch.arange(tokens, device=wav.device)[None] >= lengths[:, None]
        else:
            pad = torch.zeros(mel.shape[:2], dtype=torch.bool, device=wav.device)
        return normalize_frames(mel, pad)

    def teacher_sharing(self, dense: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
        # The teacher consumes the student's pre-mask conv features. A dense student's teacher copies
        # the positional convs each step and averages the rest of the context (data2vec v1); a sparse
        # one's averages the whole context (2.0).
        return ("local",), (("context.pos_conv",) if dense else ())

    def prepare(self, data: Any, mask: Any, seed: int, view: StudentView, views: Any = None) -> tuple[Any, Any, Any]:
        from multissl.modalities.audio.data import AudioCollator, build_audio_dataset

        if self.cfg.mask_embedding is None:
            self.cfg.mask_embedding = view.dense
        if view.views:
            collator = ViewCollator(SpeechViews(views or AudioViews(), self.cfg), mask if view.view_masks else None)
            return build_audio_dataset(data, self.cfg, seed, normalized=False), collator, self.feature_extractor()
        dataset = build_audio_dataset(data, self.cfg, seed)
        return dataset, AudioCollator(mask, self.cfg, view.clones), self.feature_extractor()

    def feature_extractor(self):
        """The ``Wav2Vec2FeatureExtractor`` that prepares inputs exactly as multissl's collator does."""
        from transformers import Wav2Vec2FeatureExtractor

        return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=self.cfg.sample_rate, padding_value=0.0,
                                        do_normalize=self.cfg.normalize, return_attention_mask=True)

    def hf_config(self, enc: EncoderConfig, arch: str | None = None):
        from transformers import Data2VecAudioConfig

        if arch not in (None, "data2vec-audio"):
            raise ValueError(f"--arch: speech encoders export as data2vec-audio, not {arch!r}")
        if enc.norm != "post":
            raise ValueError("encoder.norm: Data2VecAudioModel holds post-LN encoders only")
        c = self.cfg
        return Data2VecAudioConfig(
            hidden_size=enc.dim, num_hidden_layers=enc.depth, num_attention_heads=enc.heads,
            intermediate_size=enc.ffn_dim, hidden_act="gelu", hidden_dropout=enc.dropout,
            attention_dropout=enc.attention_dropout, activation_dropout=enc.activation_dropout,
            feat_proj_dropout=0.0, layerdrop=0.0, layer_norm_eps=enc.eps, conv_dim=list(c.conv_dim),
            conv_stride=list(c.conv_stride), conv_kernel=list(c.conv_kernel), conv_bias=False,
            num_conv_pos_embeddings=c.pos_conv_depth, conv_pos_kernel_size=c.pos_conv_kernel,
            num_conv_pos_embedding_groups=c.pos_conv_groups,
        )

    @classmethod
    def load_preprocessor(cls, folder: str | Path):
        from transformers import AutoFeatureExtractor

        return AutoFeatureExtractor.from_pretrained(str(folder))

    @classmethod
    def card_notes(cls, adapter: dict[str, Any]) -> list[str]:
        rate = adapter.get("sample_rate", 16000)
        notes = [f"Inputs are raw {rate} Hz mono waveforms; the processor normalises each utterance and "
                 "returns the attention mask. Fine-tune for speech recognition with "
                 "`Data2VecAudioForCTC.from_pretrained(name, vocab_size=...)` (a new CTC head)."]
        if not adapter.get("mask_embedding"):
            notes.append("`masked_spec_embed` (the SpecAugment vector used when fine-tuning) was not trained "
                         "(the objective dropped masked frames instead).")
        return notes

    @classmethod
    def holds_preprocessor(cls, folder: Path) -> bool:
        path = folder / "preprocessor_config.json"
        return path.is_file() and "sampling_rate" in json.loads(path.read_text())

    @classmethod
    def probe_features(cls, model: nn.Module, preprocessor: Any, inputs: list[Any], pool: str = "mean") -> np.ndarray:
        """Every hidden state mean-pooled over real (non-padding) frames: (files, layers + 1, D)."""
        from multissl.modalities.audio.data import read_audio

        if pool != "mean":
            raise ValueError(f"--pool {pool}: speech encoders have no CLS token; use --pool mean")
        rate = preprocessor.sampling_rate
        rows = []
        with torch.no_grad():
            for i in range(0, len(inputs), 16):
                wavs = [read_audio(p, rate) for p in inputs[i:i + 16]]
                enc = preprocessor(wavs, sampling_rate=rate, padding=True, return_attention_mask=True,
                                   return_tensors="pt").to(model.device)
                states = model(**enc, output_hidden_states=True).hidden_states
                valid = model._get_feature_vector_attention_mask(states[0].shape[1], enc["attention_mask"]).bool()
                rows.append(pool_states(states, valid))
        return np.concatenate(rows)

    @classmethod
    def check_input(cls, model_config: Any, item: str) -> str:
        """Unreadable, empty, or shorter than one frame of the encoder's convolutions (which would pool
        nothing)."""
        from multissl.modalities.audio.data import Clip, check

        field, jump = 1, 1
        for k, s in zip(model_config.conv_kernel, model_config.conv_stride, strict=True):
            field += (k - 1) * jump
            jump *= s
        return check(Clip(item, -1, 0), field, 16000)[1]

    @classmethod
    def preview(cls, item: str) -> tuple[bytes, str]:
        """The file itself where browsers play its format, else the recording decoded to a 16 kHz WAV."""
        import io

        import soundfile as sf

        from multissl.modalities.audio.data import read_audio

        playable = {".wav": "audio/wav", ".ogg": "audio/ogg", ".oga": "audio/ogg", ".opus": "audio/ogg",
                    ".mp3": "audio/mpeg", ".flac": "audio/flac"}
        suffix = Path(item).suffix.lower()
        if suffix in playable:
            return Path(item).read_bytes(), playable[suffix]
        buf = io.BytesIO()
        sf.write(buf, read_audio(item, 16000), 16000, format="WAV")
        return buf.getvalue(), "audio/wav"

    def example_inputs(self, preprocessor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The shipped spoken sentence and its first 0.6 s, padded into one batch."""
        from multissl.modalities.audio.data import read_audio

        wav = read_audio(EXAMPLE_AUDIO, self.cfg.sample_rate)
        fe = preprocessor or self.feature_extractor()
        batch = fe([wav, wav[: int(0.6 * self.cfg.sample_rate)]], sampling_rate=self.cfg.sample_rate,
                   padding=True, return_attention_mask=True, return_tensors="pt")
        inputs = {"input_values": batch["input_values"], "attention_mask": batch["attention_mask"]}
        return inputs, inputs

    def to_hf_state_dict(self, state: dict[str, torch.Tensor], enc: EncoderConfig) -> dict[str, torch.Tensor]:
        return to_hf_names(state, _hf_names(self.cfg), HF_BLOCK_NAMES, "encoder.layers.", enc.depth)

    def from_hf(self, folder: str) -> tuple[EncoderConfig, dict[str, torch.Tensor]]:
        """Read a ``Data2VecAudioModel`` folder (or a task model built on one, e.g. ForCTC)."""
        from transformers import AutoConfig, AutoModel

        hf = AutoConfig.from_pretrained(folder)
        if hf.model_type != "data2vec-audio":
            raise ValueError(f"{folder}: model_type {hf.model_type!r} is not data2vec-audio")
        if hf.hidden_act != "gelu" or hf.feat_extract_activation != "gelu" or hf.conv_bias:
            raise ValueError(f"{folder}: only gelu activations and bias-free feature convs are supported")
        sd = AutoModel.from_pretrained(folder).state_dict()  # current names, whatever the file holds
        enc = EncoderConfig(dim=hf.hidden_size, depth=hf.num_hidden_layers, heads=hf.num_attention_heads,
                            ffn_dim=hf.intermediate_size, norm="post", eps=hf.layer_norm_eps,
                            dropout=hf.hidden_dropout, attention_dropout=hf.attention_dropout,
                            activation_dropout=hf.activation_dropout)
        c = self.cfg
        c.conv_dim, c.conv_kernel, c.conv_stride = tuple(hf.conv_dim), tuple(hf.conv_kernel), tuple(hf.conv_stride)
        c.pos_conv_depth, c.pos_conv_kernel = hf.num_conv_pos_embeddings, hf.conv_pos_kernel_size
        c.pos_conv_groups = hf.num_conv_pos_embedding_groups
        state = from_hf_names(sd, _hf_names(c), HF_BLOCK_NAMES, "encoder.layers.", enc.depth, folder)
        return enc, state


def _hf_names(c: AudioConfig) -> dict[str, str]:
    """multissl key -> Data2VecAudio key for everything outside the transformer blocks."""
    names = {
        "local.layer_norm.weight": "feature_projection.layer_norm.weight",
        "local.layer_norm.bias": "feature_projection.layer_norm.bias",
        "local.projection.weight": "feature_projection.projection.weight",
        "local.projection.bias": "feature_projection.projection.bias",
        "context.layer_norm.weight": "encoder.layer_norm.weight",
        "context.layer_norm.bias": "encoder.layer_norm.bias",
    }
    for i in range(len(c.conv_dim)):
        for n in ("conv.weight", "layer_norm.weight", "layer_norm.bias"):
            names[f"local.conv_layers.{i}.{n}"] = f"feature_extractor.conv_layers.{i}.{n}"
    for i in range(c.pos_conv_depth):
        for kind in ("weight", "bias"):
            names[f"context.pos_conv.{i}.conv.{kind}"] = f"encoder.pos_conv_embed.layers.{i}.conv.{kind}"
    names["local.mask_embedding"] = "masked_spec_embed"  # v1 only; optional both ways
    return names
