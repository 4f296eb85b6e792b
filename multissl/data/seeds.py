"""Per-example mask seeds. Each example carries ``(seed, epoch, index)`` (streams: ``(seed, epoch,
part, index)``), so its masks are the same whichever DataLoader worker makes them and whether or
not the run was resumed."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def example_rng(seed: tuple[int, ...] | list[int]) -> np.random.Generator:
    """The mask generator for one example.

    >>> example_rng((1, 0, 5)).integers(100) == example_rng((1, 0, 5)).integers(100)
    np.True_
    """
    return np.random.default_rng([int(s) for s in seed])


class SeededDataset(torch.utils.data.Dataset):
    """A map-style dataset whose examples gain a ``seed`` entry; the Trainer calls ``set_epoch``."""

    def __init__(self, ds: Any, seed: int):
        self.ds, self.seed, self.epoch = ds, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.ds[int(i)], "seed": (self.seed, self.epoch, int(i))}
