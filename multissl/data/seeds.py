"""Per-example mask seeds. Each example carries ``(seed, epoch, index)``, so its masks are the same
whichever DataLoader worker makes them and whether or not the run was resumed."""

from __future__ import annotations

from collections.abc import Iterator
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


class SeededIterable(torch.utils.data.IterableDataset):
    """A streamed dataset whose examples gain a ``seed`` entry (worker id and running index)."""

    def __init__(self, ds: Any, seed: int):
        self.ds, self.seed, self.epoch = ds, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.ds, "set_epoch"):
            self.ds.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        for i, ex in enumerate(self.ds):
            yield {**ex, "seed": (self.seed, self.epoch, worker, i)}
