"""Features for probes: every hidden state of an exported encoder, pooled per input (text tokens,
speech frames, image patches or CLS), chosen by the preprocessor the export holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

Featurizer = Callable[[torch.nn.Module, Any, list[Any]], np.ndarray]


def _pool(hidden_states: tuple[torch.Tensor, ...], valid: torch.Tensor) -> np.ndarray:
    """Mean over valid positions of every hidden state: (B, layers, D)."""
    m = valid.unsqueeze(-1).to(hidden_states[0].dtype)
    return torch.stack([(h * m).sum(1) / m.sum(1).clamp_min(1) for h in hidden_states], 1).numpy()


@torch.no_grad()
def text_features(model: torch.nn.Module, tokenizer: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Every hidden state mean-pooled over non-padding tokens: (texts, layers + 1, D)."""
    rows = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                        max_length=model.config.max_position_embeddings - model.config.pad_token_id - 1,
                        return_tensors="pt")
        rows.append(_pool(model(**enc, output_hidden_states=True).hidden_states, enc["attention_mask"].bool()))
    return np.concatenate(rows)


@torch.no_grad()
def audio_features(model: torch.nn.Module, extractor: Any, paths: list[str], batch_size: int = 16) -> np.ndarray:
    """Every hidden state mean-pooled over real (non-padding) frames: (files, layers + 1, D)."""
    from multissl.data.audio import read_audio

    rate = extractor.sampling_rate
    rows = []
    for i in range(0, len(paths), batch_size):
        wavs = [read_audio(p, rate) for p in paths[i:i + batch_size]]
        enc = extractor(wavs, sampling_rate=rate, padding=True, return_attention_mask=True, return_tensors="pt")
        states = model(**enc, output_hidden_states=True).hidden_states
        valid = model._get_feature_vector_attention_mask(states[0].shape[1], enc["attention_mask"]).bool()
        rows.append(_pool(states, valid))
    return np.concatenate(rows)


@torch.no_grad()
def image_features(model: torch.nn.Module, processor: Any, paths: list[str], batch_size: int = 64,
                   pool: str = "mean") -> np.ndarray:
    """Every hidden state pooled: the mean over patches, or the CLS token (``pool="cls"``):
    (images, layers + 1, D)."""
    from multissl.data.vision import Picture

    rows = []
    for i in range(0, len(paths), batch_size):
        images = [Picture(p).open() for p in paths[i:i + batch_size]]
        states = model(**processor(images, return_tensors="pt"), output_hidden_states=True).hidden_states
        if pool == "cls":
            rows.append(torch.stack([h[:, 0] for h in states], 1).numpy())
        else:
            rows.append(torch.stack([h[:, 1:].mean(1) for h in states], 1).numpy())
    return np.concatenate(rows)


def load_features_backend(model_dir: str | Path, pool: str = "mean") -> tuple[Any, Featurizer]:
    """(preprocessor, featurizer) for an exported folder, chosen by the preprocessor it holds."""
    import json

    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

    folder = Path(model_dir)
    if (folder / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(model_dir), text_features
    if (folder / "preprocessor_config.json").is_file():
        config = json.loads((folder / "preprocessor_config.json").read_text())
        if "image_processor_type" in config:
            proc = AutoImageProcessor.from_pretrained(model_dir)
            return proc, lambda m, p, x: image_features(m, p, x, pool=pool)
        fe = AutoFeatureExtractor.from_pretrained(model_dir)
        if getattr(fe, "sampling_rate", None):
            return fe, audio_features
    raise FileNotFoundError(f"{model_dir}: no tokenizer_config.json or audio/image preprocessor_config.json")
