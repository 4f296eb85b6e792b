"""The audio modality: its config, encoder parts, data, Hugging Face mapping and probe features."""

from multissl.modalities.audio.model import Audio, AudioConfig

__all__ = ["Audio", "AudioConfig"]
