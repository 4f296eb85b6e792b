"""Data loading, preprocessing and mask-making collators, per modality."""
