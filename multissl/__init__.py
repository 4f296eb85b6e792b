"""multissl: self-supervised pretraining (data2vec v1 and 2.0) exported as Hugging Face models."""

__version__ = "0.1.0"
