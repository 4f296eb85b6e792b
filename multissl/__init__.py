"""multissl: self-supervised pretraining (data2vec v1 and 2.0, MLM, MAE, BEST-RQ) exported as Hugging Face models.

The functions of :mod:`multissl.api` are here too, loaded on first use so that ``import multissl``
stays light (no torch, transformers or datasets until a function is called):

>>> import multissl
>>> run = multissl.pretrain("text/tiny", data="corpus.txt", tokenizer="tok/", output_dir="runs/t1")  # doctest: +SKIP
>>> multissl.export(run, "out/t1")  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import types
from typing import Any

__version__ = "0.1.0"

API = ("curate", "embed", "export", "load_recipe", "pretrain", "probe", "push", "recipe_keys", "recipes", "search",
       "select", "show_recipe")
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from multissl import api

        return getattr(api, name)
    raise AttributeError(f"module 'multissl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])


class _Package(types.ModuleType):
    """``multissl.export`` and ``multissl.probe`` name both an API function and a submodule (the
    ``export`` package, ``probe.py``). Importing a submodule makes the import system set it as an
    attribute of its package, which would hide the function after the first export or probe; this
    keeps the function (the submodules stay importable: ``from multissl.export.hf import export``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
