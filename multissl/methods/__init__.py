"""Objectives, one file each; adding one is adding a file and a line here."""

from multissl.methods.barlow_twins import BarlowTwins
from multissl.methods.base import Method
from multissl.methods.bestrq import BestRQ
from multissl.methods.byol import BYOL
from multissl.methods.data2vec import Data2Vec
from multissl.methods.deepcluster import DeepClusterV2
from multissl.methods.dino import DINO
from multissl.methods.ijepa import IJEPA
from multissl.methods.mae import MAE
from multissl.methods.mlm import MaskedLM
from multissl.methods.mocov3 import MoCoV3
from multissl.methods.nnclr import NNCLR
from multissl.methods.pirl import PIRL
from multissl.methods.simclr import SimCLR
from multissl.methods.simcse import SimCSE
from multissl.methods.simsiam import SimSiam
from multissl.methods.supcon import SupCon
from multissl.methods.swav import SwAV
from multissl.methods.vicreg import VICReg

METHODS: dict[str, type[Method]] = {
    "data2vec": Data2Vec, "mlm": MaskedLM, "mae": MAE, "bestrq": BestRQ, "ijepa": IJEPA,
    "byol": BYOL, "simclr": SimCLR, "simcse": SimCSE, "supcon": SupCon, "dino": DINO,
    "barlow_twins": BarlowTwins, "vicreg": VICReg, "mocov3": MoCoV3, "simsiam": SimSiam, "swav": SwAV,
    "nnclr": NNCLR, "deepcluster": DeepClusterV2, "pirl": PIRL,
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
