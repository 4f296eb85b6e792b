"""Features for probes: every hidden state of an exported encoder, pooled per input, by the modality
whose preprocessor the export holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multissl.modalities import MODALITIES

Featurizer = Callable[[torch.nn.Module, Any, list[Any]], np.ndarray]


def load_features_backend(model_dir: str | Path, pool: str = "mean") -> tuple[Any, Featurizer]:
    """(preprocessor, featurizer) for an exported folder, chosen by the preprocessor it holds."""
    folder = Path(model_dir)
    for adapter in MODALITIES.values():
        if adapter.holds_preprocessor(folder):
            preprocessor = adapter.load_preprocessor(folder)
            return preprocessor, lambda m, p, x, a=adapter: a.probe_features(m, p, x, pool)
    raise FileNotFoundError(f"{model_dir}: no tokenizer_config.json or audio/image preprocessor_config.json")
