"""The vision modality: its config, encoder parts, data, Hugging Face mapping and probe features."""

from multissl.modalities.vision.model import Vision, VisionConfig

__all__ = ["Vision", "VisionConfig"]
