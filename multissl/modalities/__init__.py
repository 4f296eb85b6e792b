"""Modality adapters, one folder each; adding a modality is adding a folder and a line here."""

from multissl.core.adapter import Modality
from multissl.modalities.audio import Audio
from multissl.modalities.text import Text
from multissl.modalities.vision import Vision

MODALITIES: dict[str, type[Modality]] = {"text": Text, "audio": Audio, "vision": Vision}


def get_modality(name: str) -> type[Modality]:
    """The adapter class registered as ``name``.

    >>> get_modality("text").name
    'text'
    """
    if name not in MODALITIES:
        raise KeyError(f"modality: unknown {name!r}; known: {', '.join(sorted(MODALITIES))}")
    return MODALITIES[name]


__all__ = ["MODALITIES", "Modality", "get_modality"]
