"""The text modality: its config, encoder parts, data, Hugging Face mapping and probe features."""

from multissl.modalities.text.model import Text, TextConfig

__all__ = ["Text", "TextConfig"]
