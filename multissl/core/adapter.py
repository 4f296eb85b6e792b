"""The adapter contract. A modality adapter owns only what differs between modalities: its local
encoder, its positional scheme, its decoder, what the EMA teacher shares with the student, and its
mapping to and from a Hugging Face class, its data and probe features. Adapters register by name
(``multissl.modalities``); the core never asks which modality it is running."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from multissl.core.blocks import EncoderConfig
from multissl.core.decoder import Decoder1d, DecoderConfig

# The parts of an encoder, in the order data flows through them.
PARTS = ("local", "context", "blocks", "norm")


@dataclass(frozen=True)
class StudentView:
    """What an objective asks of the data: how its student sees a masked sample, or, for objectives
    that compare augmented views of a sample (DINO, BYOL), which views it gets."""

    dense: bool
    """True: masked tokens stay in the student's input, replaced by a mask token or a learned mask
    embedding (data2vec v1, BERT, BEST-RQ); False: the model drops them (data2vec 2.0, MAE)."""

    clones: int = 1
    """Masks per sample (data2vec 2.0's multi-mask); the teacher sees each sample once."""

    bert_selected: bool = False
    """With BERT masking (``mask.kind: bert``): the ``mask`` the model gets marks every selected token
    (masked, replaced by a random one, or kept), as BERT's loss does; False: the masked ones only."""

    views: bool = False
    """True: the collator makes augmented views of each sample (the recipe's ``views`` section, typed by
    the modality's ``views_class``) instead of one masked sample: the batch holds ``views``, a list of
    input dicts (global views first, then local ones)."""

    view_masks: bool = False
    """With ``views``: also mask each global view (iBOT), the recipe's ``mask`` section applied to the
    view's token grid; the batch then holds ``view_masks``, one (B, T) bool tensor per global view."""


@dataclass(frozen=True)
class PatchGrid:
    """How a modality cuts its input into a grid of patches (for objectives that draw or rebuild it)."""

    grid: tuple[int, int]
    """Patches per column and per row."""

    patch: int
    """A patch's side in pixels."""

    channels: int
    """Channels per pixel."""

    mean: tuple[float, ...]
    """Per-channel mean the input was normalised with (``x * std + mean`` undoes it)."""

    std: tuple[float, ...]
    """Per-channel standard deviation the input was normalised with."""


class Modality(ABC):
    """Builds the modality-specific parts of an encoder.

    ``local(inputs) -> (features (B, T, D), padding_mask (B, T))`` turns raw inputs into tokens; it may
    own a ``mask_embedding`` parameter that replaces masked tokens for dense students.
    ``context(features, padding_mask, mask=None) -> (B, E + T, D)`` adds positions and the ``E``
    extra tokens (CLS, ...); it receives the mask for sparse students, before masked tokens are dropped.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    views_class: ClassVar[type | None] = None
    """The typed config of the recipe's ``views`` section (a dataclass with ``validate(where)``); None:
    the modality makes no augmented views."""
    num_extra_tokens: int = 0
    hf_untrained: tuple[str, ...] = ("pooler.",)
    """HF parameter prefixes that pretraining does not produce (left at the HF initialisation)."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    @abstractmethod
    def build_local(self, enc: EncoderConfig) -> nn.Module: ...

    @abstractmethod
    def build_context(self, enc: EncoderConfig) -> nn.Module: ...

    def build_decoder(self, cfg: DecoderConfig, dim: int) -> nn.Module:
        """The data2vec 2.0 decoder; 1-D convolutions over the token sequence unless the modality says otherwise.
        It has ``features(x, padding_mask)`` over all positions and a ``proj`` module that the model
        applies to the masked positions only."""
        return Decoder1d(cfg, dim)

    def token_embedding(self, local: nn.Module) -> nn.Embedding | None:
        """The input token table of a local encoder, for objectives that predict tokens through tied
        weights (masked language modelling); None for modalities without a vocabulary."""
        return None

    def patch_grid(self) -> PatchGrid | None:
        """The patch grid of a modality whose tokens are patches of an image; None otherwise."""
        return None

    def token_signal(self, inputs: dict[str, Any], tokens: int) -> torch.Tensor:
        """What each of the ``tokens`` tokens of ``inputs`` is made of, (B, tokens, F) in float32, for
        objectives that predict the input itself: an image patch's pixels (MAE), the log-mel frame of a
        speech frame (BEST-RQ)."""
        raise NotImplementedError(f"modality {self.name!r} has no token signal")

    def teacher_sharing(self, dense: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(parts an EMA teacher shares with the student, parameter prefixes it copies instead of
        averaging), for a dense or a sparse student."""
        return (), ()

    @abstractmethod
    def prepare(self, data: Any, mask: Any, seed: int, view: StudentView, views: Any = None
                ) -> tuple[Any, Any, Any]:
        """(train dataset, collator, preprocessor) for the recipe's ``data`` and ``mask`` sections;
        completes ``self.cfg`` from the data (token ids, sample rate, ...). With ``view.views`` the
        collator makes the views ``views`` (an instance of ``views_class``) says. The preprocessor
        (tokenizer, feature extractor, image processor) has ``save_pretrained`` and is exported beside
        the model."""

    @abstractmethod
    def hf_config(self, enc: EncoderConfig, arch: str | None = None) -> Any:
        """The Hugging Face config of the exported encoder; ``arch`` picks among the classes that
        hold it exactly (None: the adapter's default)."""

    @classmethod
    @abstractmethod
    def load_preprocessor(cls, folder: str | Path) -> Any:
        """The preprocessor saved in an HF folder (tokenizer, feature extractor, image processor)."""

    @abstractmethod
    def example_inputs(self, preprocessor: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(HF model kwargs, multissl encoder inputs) for the same small real batch, with padding,
        used to check an export."""

    @abstractmethod
    def to_hf_state_dict(self, state: dict[str, torch.Tensor], enc: EncoderConfig) -> dict[str, torch.Tensor]:
        """Encoder state dict (keys ``local.*``, ``context.*``, ``blocks.*``, ``norm.*``) in HF names."""

    @abstractmethod
    def from_hf(self, folder: str) -> tuple[EncoderConfig, dict[str, torch.Tensor]]:
        """Read an HF model folder: the encoder shape and an encoder state dict in multissl names."""

    # --- probes ------------------------------------------------------------------------------------

    input_extensions: ClassVar[tuple[str, ...]] = ()
    """File extensions of this modality's inputs (labelled folders of files are read by them)."""

    item_view: ClassVar[str] = "text"
    """How the curation page shows one input: "text" (the text itself), "image" or "audio" (the file)."""

    padding_exact: ClassVar[bool] = True
    """Whether an input's probe features are the same alone and padded in a batch; False (speech: HF's
    stacked positional convolutions see the padded frames) makes ``multissl embed`` read inputs one at a
    time, so that an item's embedding never depends on its neighbours."""

    @classmethod
    def check_input(cls, model_config: Any, item: str) -> str:
        """Why one input cannot be embedded by an HF encoder with ``model_config`` ("" when it can): the
        checks the training readers make before decoding, for what decoding alone would not catch."""
        return ""

    @classmethod
    def preview(cls, item: str) -> tuple[bytes, str]:
        """(bytes, MIME type) a browser shows for one input file (``item_view`` image or audio)."""
        raise NotImplementedError(f"{cls.name}: its inputs are shown as text")

    @classmethod
    def holds_preprocessor(cls, folder: Path) -> bool:
        """Whether an exported folder's preprocessor is this modality's."""
        return False

    @classmethod
    def probe_features(cls, model: nn.Module, preprocessor: Any, inputs: list[Any], pool: str = "mean") -> Any:
        """Every hidden state of an HF ``model`` pooled per input: an array (inputs, layers + 1, D)."""
        raise NotImplementedError(f"{cls.name}: no probe features")

    # --- model cards -------------------------------------------------------------------------------

    @classmethod
    def card_usage(cls, name: str) -> list[str]:
        """Python lines that load the exported model and its preprocessor."""
        return ["from transformers import AutoModel, AutoProcessor", f'model = AutoModel.from_pretrained("{name}")',
                f'processor = AutoProcessor.from_pretrained("{name}")']

    @classmethod
    def card_notes(cls, adapter: dict[str, Any]) -> list[str]:
        """What a user of this kind of encoder needs to know beyond loading it (``adapter``: the
        recipe's adapter section)."""
        return ["The pooler, if the class has one, was not trained: use the hidden states (for example "
                "mean-pooled) or fine-tune."]
