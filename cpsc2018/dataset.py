"""torch Datasets over the record cache: random crops for training, fixed windows for evaluation.

Kept apart from the rest of ``cpsc2018`` because it imports torch, which the app cannot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from cpsc2018.cache import RecordCache
from cpsc2018.catalog import Entry
from cpsc2018.preprocess import fit_length, random_crop, window_starts


def _targets(cache: RecordCache, entries: Sequence[Entry], label_set: str) -> np.ndarray:
    by_key = {e.key: e for e in entries}
    return np.array([by_key[k].targets(label_set) for k in cache.keys], dtype=np.float32)


class TrainWindows(Dataset):
    """One random window per record per epoch. Crops are a function of (seed, epoch, index), so a
    resumed run draws exactly the windows the uninterrupted run would have drawn."""

    def __init__(self, cache: RecordCache, entries: Sequence[Entry], label_set: str = "six", seed: int = 0) -> None:
        self.cache = cache
        self.targets = _targets(cache, entries, label_set)
        self.seed = seed
        self.epoch = 0
        self.window = cache.cfg.window_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        x = random_crop(self.cache.get(i), self.window, rng)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(self.targets[i])


class EvalWindows(Dataset):
    """Every record cut into deterministic windows; items carry their record index so that window
    probabilities can be pooled per record (max over windows: a premature beat in any window counts)."""

    def __init__(
        self, cache: RecordCache, entries: Sequence[Entry], label_set: str = "six", max_windows: int | None = 6
    ) -> None:
        self.cache = cache
        self.targets = _targets(cache, entries, label_set)
        self.window = cache.cfg.window_samples
        self.items = [
            (i, s) for i in range(len(cache)) for s in window_starts(int(cache.lengths[i]), self.window, max_windows)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        i, s = self.items[j]
        x = fit_length(self.cache.get(i)[:, s : s + self.window], self.window)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(self.targets[i]), i
