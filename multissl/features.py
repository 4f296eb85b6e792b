"""Features for probes: every hidden state of an exported encoder, pooled per input, by the modality
whose preprocessor the export holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multissl.modalities import MODALITIES, Modality

Featurizer = Callable[[torch.nn.Module, Any, list[Any]], np.ndarray]


def modality_of(model_dir: str | Path) -> type[Modality]:
    """The modality adapter whose preprocessor an exported folder holds."""
    folder = Path(model_dir)
    for adapter in MODALITIES.values():
        if adapter.holds_preprocessor(folder):
            return adapter
    raise FileNotFoundError(f"{model_dir}: no tokenizer_config.json or audio/image preprocessor_config.json")


def load_features_backend(model_dir: str | Path, pool: str = "mean") -> tuple[Any, Featurizer]:
    """(preprocessor, featurizer) for an exported folder, chosen by the preprocessor it holds."""
    adapter = modality_of(model_dir)
    return adapter.load_preprocessor(model_dir), lambda m, p, x: adapter.probe_features(m, p, x, pool)
