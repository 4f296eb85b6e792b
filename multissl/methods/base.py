"""What every objective is: the shared encoder of one modality, the heads and loss the objective
owns, and (for teacher-student objectives) the EMA teacher it declares. A method never asks which
modality it runs on; what it needs of the data it says in its :class:`StudentView`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from multissl.core.adapter import Modality, StudentView
from multissl.core.blocks import EncoderConfig
from multissl.core.encoder import Encoder
from multissl.core.teacher import TeacherStudent


class Method(TeacherStudent):
    """An objective. ``forward(**batch)`` takes the collator's batch (``inputs``, ``mask``, and what the
    method's view asks for) and returns ``{"loss": ..., <health metrics>}``.

    Subclasses set ``name`` and ``config_class`` (a dataclass with a ``name`` field and
    ``validate(where)``) and build their heads after ``super().__init__``, which builds the encoder
    (so that a fixed seed draws the same weights whatever the objective adds after it).
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    pipeline_tag: ClassVar[str] = "feature-extraction"
    """The Hub pipeline an export serves."""
    labels: ClassVar[bool] = False
    """True: the objective trains on labels (``data.label_column``); the batch then holds ``labels``."""

    evaluated_encoder: ClassVar[str] = "student"
    """The encoder the objective's paper evaluates, and ``multissl export`` writes unless told
    otherwise: ``"student"`` or ``"teacher"`` (the EMA copy)."""

    def exported_encoder(self) -> str:
        """What ``multissl export`` writes unless told otherwise: ``evaluated_encoder``, unless the
        method's config chooses (I-JEPA's ``export``)."""
        return self.evaluated_encoder

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: Any, run_steps: int = 0):
        super().__init__()
        self.cfg, self.run_steps = cfg, run_steps
        self.encoder = Encoder(modality, encoder)

    @classmethod
    def build(cls, modality: Modality, encoder: EncoderConfig, cfg: Any, run_steps: int = 0) -> Method:
        """The model for ``cfg`` (a method with variants picks one here)."""
        return cls(modality, encoder, cfg, run_steps)

    @classmethod
    def student_view(cls, cfg: Any) -> StudentView:
        """How the data must mask samples for this method."""
        raise NotImplementedError

    @classmethod
    def check(cls, cfg: Any, encoder: EncoderConfig, mask: Any) -> None:
        """Checks across recipe sections (raise ``ValueError`` naming the keys); none by default."""

    @classmethod
    def check_views(cls, cfg: Any, views: Any) -> None:
        """Checks of the recipe's ``views`` section (an instance of the modality's ``views_class``) for
        objectives that take views, e.g. how many views they compare; raise ``ValueError`` naming the
        key. None by default."""

    def hf_task(self) -> tuple[str, dict[str, torch.Tensor]] | None:
        """For objectives whose pretraining head has a Hugging Face class: (the transformers Auto class
        of the export, e.g. ``AutoModelForMaskedLM``; the head's tensors under that class's names).
        None: the export is the bare encoder (``AutoModel``)."""
        return None

    def task_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """What the exported task class outputs as ``logits`` for ``inputs`` (checked on export)."""
        return None

    def hf_pretraining(self, mask: Any) -> Any:
        """The whole pretraining model as a Hugging Face class where one exists (MAE:
        ``ViTMAEForPreTraining``, its mask ratio from the recipe's ``mask`` section), exported beside
        the encoder in ``pretraining/``; None: none."""
        return None

    def hf_extra_files(self) -> dict[str, str]:
        """Files the objective adds to an export, beside the HF model and its preprocessor (path
        relative to the export folder -> text), e.g. sentence-transformers' ``modules.json``; none by
        default."""
        return {}

    def snapshot(self, batch: dict[str, Any], folder: Path, step: int) -> None:
        """Write what shows this objective's progress to a person (MAE: a reconstruction grid, PNG)
        into the run ``folder`` at optimiser step ``step``; called (in eval mode, without gradients) at
        each checkpoint with the same few training samples. Nothing by default."""

    @classmethod
    def card_tags(cls, cfg: Any) -> list[str]:
        """Hub tags of an export."""
        return [cls.name]

    @classmethod
    def card_title(cls, cfg: Any) -> str:
        """The objective's name in a sentence ("... pretrained by multissl with <title>")."""
        return cls.name

    @classmethod
    def card_objective(cls, cfg: Any, mask: Any) -> str:
        """One line on the objective and its masking."""
        return f"{cls.name}, {mask.kind} masking at {mask.prob}"

    def forward(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor, **batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError
