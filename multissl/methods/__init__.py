"""Objectives, one file each; adding one is adding a file and a line here."""

from multissl.methods.base import Method
from multissl.methods.bestrq import BestRQ
from multissl.methods.byol import BYOL
from multissl.methods.data2vec import Data2Vec
from multissl.methods.dino import DINO
from multissl.methods.ijepa import IJEPA
from multissl.methods.mae import MAE
from multissl.methods.mlm import MaskedLM
from multissl.methods.simclr import SimCLR
from multissl.methods.simcse import SimCSE
from multissl.methods.supcon import SupCon

METHODS: dict[str, type[Method]] = {
    "data2vec": Data2Vec, "mlm": MaskedLM, "mae": MAE, "bestrq": BestRQ, "ijepa": IJEPA,
    "byol": BYOL, "simclr": SimCLR, "simcse": SimCSE, "supcon": SupCon, "dino": DINO,
}


def get_method(name: str) -> type[Method]:
    """The objective registered as ``name``.

    >>> get_method("data2vec").name
    'data2vec'
    """
    if name not in METHODS:
        raise KeyError(f"method.name: unknown {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "get_method"]
