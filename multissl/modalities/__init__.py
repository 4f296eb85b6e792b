"""Modality adapters; importing this package registers the built-in ones."""

from multissl.modalities import audio, text, vision  # noqa: F401
from multissl.modalities.base import MODALITIES, Modality, get_modality, register

__all__ = ["MODALITIES", "Modality", "get_modality", "register"]
