"""The modality-agnostic teacher-student core."""
