"""Fine-tuning as a probe: the exported encoder under the classification head of its Hugging Face class
(whichever of ``AutoModelForSequenceClassification``, ``AutoModelForAudioClassification`` and
``AutoModelForImageClassification`` maps the export's config), every weight trained for a few epochs on
a training fold, then evaluated on the held-out fold: the end-to-end row that self-supervised method
tables report beside the frozen probes (e.g. MAE, He et al. 2022). Defaults are sized for a CPU."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multissl.protocols import FineTuneConfig

AUTO_CLASSIFIERS = {
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForAudioClassification": "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForImageClassification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
}


def classifier_class(model_type: str) -> Any:
    """The transformers Auto class with a classification head for ``model_type`` (``vit``,
    ``data2vec-audio``, ``roberta``, ...).

    >>> classifier_class("vit").__name__
    'AutoModelForImageClassification'
    """
    import transformers
    from transformers.models.auto import modeling_auto

    for auto, names in AUTO_CLASSIFIERS.items():
        if model_type in getattr(modeling_auto, names):
            return getattr(transformers, auto)
    raise ValueError(f"model_type {model_type!r}: transformers has no sequence, audio or image classification "
                     "class for it")


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """transformers' report of the new head's weights and its progress bar, once per fold, say nothing the
    caller does not know."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def classifier_loader(model_dir: str | Path, random_init: bool = False) -> Callable[[int], torch.nn.Module]:
    """A function of the number of classes that builds the export ``model_dir`` under a new
    classification head; with ``random_init``, the same architecture with every weight drawn afresh."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    auto = classifier_class(config.model_type)

    def load(num_labels: int) -> torch.nn.Module:
        with _quiet_loading():
            if random_init:
                return auto.from_config(AutoConfig.from_pretrained(model_dir, num_labels=num_labels))
            return auto.from_pretrained(model_dir, num_labels=num_labels)

    return load


class FineTuner:
    """A :data:`~multissl.classifiers.Predictor` whose features are row numbers into ``inputs``: it
    fine-tunes a fresh model from ``load(classes)`` on the training rows (seeded: head, dropout and
    batch order) and predicts the test rows. ``batch(preprocessor, inputs, model_config)`` turns raw
    inputs into the model's keyword arguments (a modality's ``model_inputs``)."""

    def __init__(self, load: Callable[[int], torch.nn.Module], batch: Callable[[Any, list[Any], Any], Any],
                 preprocessor: Any, inputs: list[Any], cfg: FineTuneConfig | None = None):
        self.load, self.batch, self.preprocessor, self.inputs = load, batch, preprocessor, inputs
        self.cfg = cfg or FineTuneConfig()

    def _forward(self, model: torch.nn.Module, rows: np.ndarray, labels: torch.Tensor | None = None) -> Any:
        kwargs = self.batch(self.preprocessor, [self.inputs[i] for i in rows], model.config)
        return model(**kwargs, labels=labels)

    def __call__(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int = 0) -> np.ndarray:
        from transformers import get_linear_schedule_with_warmup

        cfg = self.cfg
        train_rows, test_rows = train_x.reshape(-1).astype(int), test_x.reshape(-1).astype(int)
        classes, targets = np.unique(train_y, return_inverse=True)
        torch.manual_seed(seed)
        model = self.load(len(classes))
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        updates = cfg.epochs * math.ceil(len(train_rows) / cfg.batch_size)
        schedule = get_linear_schedule_with_warmup(opt, updates // 10, updates)
        order = np.random.default_rng(seed)
        model.train()
        for _ in range(cfg.epochs):
            shuffled = order.permutation(len(train_rows))
            for i in range(0, len(shuffled), cfg.batch_size):
                pick = shuffled[i:i + cfg.batch_size]
                loss = self._forward(model, train_rows[pick], torch.as_tensor(targets[pick])).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
        model.eval()
        predicted = []
        with torch.no_grad():
            for i in range(0, len(test_rows), cfg.batch_size):
                predicted.append(self._forward(model, test_rows[i:i + cfg.batch_size]).logits.argmax(-1).numpy())
        return classes[np.concatenate(predicted)]
