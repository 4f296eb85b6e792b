"""The evaluation protocols of ``multissl probe`` by name, and their settings; light (no torch), so that
the command line can list them."""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOLS = {
    "linear": "logistic regression on the last layer, pooled (row 'last layer')",
    "knn": "k-NN votes on the last layer by cosine similarity: weighted by the similarity (row 'K-NN') and by "
           "exp(similarity / T) as in DINO (row 'K-NN T=...')",
    "layers": "a learned softmax-weighted sum of every layer, then a linear classifier (row 'layer-weighted')",
    "lowshot": "the linear probe trained on a stratified share of each training fold's labels, at least one "
               "per class (rows 'linear 1%', 'linear 10%')",
    "finetune": "every weight trained for a few epochs under the HF classification head (row 'fine-tuned'; "
                "slow: one run per fold, model and seed)",
}
"""The probes ``protocols`` chooses from, in the order of their rows."""

DEFAULT_PROTOCOLS = ("linear", "knn", "layers", "lowshot")
"""The cheap ones; fine-tuning needs to be asked for."""


def parse_protocols(protocols: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Protocol names (a comma-separated string or a list) in :data:`PROTOCOLS`' order; a one-line error
    names an unknown one.

    >>> parse_protocols("knn, finetune,linear")
    ('linear', 'knn', 'finetune')
    """
    names = [n.strip() for n in (protocols.split(",") if isinstance(protocols, str) else protocols) if n.strip()]
    for name in names:
        if name not in PROTOCOLS:
            raise ValueError(f"--protocols {name}: unknown protocol; known: {', '.join(PROTOCOLS)}")
    if not names:
        raise ValueError(f"--protocols: empty; known: {', '.join(PROTOCOLS)}")
    return tuple(p for p in PROTOCOLS if p in names)


@dataclass
class FineTuneConfig:
    """How each fold's copy of the encoder is fine-tuned."""

    epochs: int = 5
    """Passes over the training fold."""

    lr: float = 5e-4
    """Peak AdamW learning rate (DeiT's 5e-4 at a batch of 512 for a ViT trained from scratch; smaller
    batches here, and fewer epochs): linear warm-up over the first tenth of the updates, then linear
    decay to 0."""

    batch_size: int = 32
    """Examples per update."""

    weight_decay: float = 0.01
    """AdamW weight decay."""

    def validate(self, where: str = "--finetune-") -> None:
        """A one-line error naming the bad key, spelled ``where`` + its name (the command line's options)."""
        if self.epochs < 1:
            raise ValueError(f"{where}epochs {self.epochs}: needs at least 1")
        if not self.lr > 0:
            raise ValueError(f"{where}lr {self.lr}: needs a positive learning rate")
        if self.batch_size < 1:
            raise ValueError(f"{where}batch-size {self.batch_size}: needs at least 1")
        if self.weight_decay < 0:
            raise ValueError(f"{where}weight-decay {self.weight_decay}: cannot be negative")
