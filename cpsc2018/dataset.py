"""torch Datasets over the record cache: random crops for training, fixed windows for evaluation.

Kept apart from the rest of ``cpsc2018`` because it imports torch, which the app cannot.
Both take ``indices`` (a subset of the cache: a split, or one federated client's records) and an
optional ``feature_fn`` (hybrid models: hand features computed from each window, numpy only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from cpsc2018.cache import RecordCache
from cpsc2018.catalog import Entry
from cpsc2018.preprocess import EVAL_MAX_WINDOWS, fit_length, random_crop, window_starts

FeatureFn = Callable[[np.ndarray], np.ndarray]


def cache_targets(cache: RecordCache, entries: Sequence[Entry], label_set: str) -> np.ndarray:
    """Multi-hot targets of every cached record, in cache order."""
    by_key = {e.key: e for e in entries}
    return np.array([by_key[k].targets(label_set) for k in cache.keys], dtype=np.float32)


class TrainWindows(Dataset):
    """``windows_per_record`` random windows per record per epoch. Crops are a function of (seed, epoch,
    record, draw), so a resumed run draws exactly the windows the uninterrupted run would have drawn."""

    def __init__(
        self,
        cache: RecordCache,
        targets: np.ndarray,
        indices: Sequence[int] | None = None,
        seed: int = 0,
        feature_fn: FeatureFn | None = None,
        windows_per_record: int = 1,
    ) -> None:
        if windows_per_record < 1:
            raise ValueError(f"windows_per_record must be at least 1, got {windows_per_record}")
        self.cache = cache
        self.windows_per_record = windows_per_record
        self.all_targets = targets
        self.indices = list(range(len(cache))) if indices is None else list(indices)
        self.seed = seed
        self.epoch = 0
        self.window = cache.cfg.window_samples
        self.feature_fn = feature_fn

    @property
    def targets(self) -> np.ndarray:
        return self.all_targets[self.indices]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices) * self.windows_per_record

    def __getitem__(self, j: int) -> tuple[torch.Tensor, ...]:
        draw, pos = divmod(j, len(self.indices))
        i = self.indices[pos]
        # Draw 0 keeps the seeding of one-window runs, so their crops do not change.
        rng = np.random.default_rng([self.seed, self.epoch, i] if draw == 0 else [self.seed, self.epoch, i, draw])
        # A writable copy: the cache is a read-only memory map, which torch tensors must not wrap.
        x = np.array(random_crop(self.cache.get(i), self.window, rng), dtype=np.float32, order="C")
        y = torch.from_numpy(self.all_targets[i])
        if self.feature_fn is not None:
            return torch.from_numpy(x), torch.from_numpy(self.feature_fn(x).astype(np.float32)), y
        return torch.from_numpy(x), y


class EvalWindows(Dataset):
    """Records cut into deterministic windows; each item ends with its position in ``indices`` so
    that window probabilities can be pooled per record (see ``federated.engine.predict_records``)."""

    def __init__(
        self,
        cache: RecordCache,
        targets: np.ndarray,
        indices: Sequence[int] | None = None,
        max_windows: int | None = EVAL_MAX_WINDOWS,
        feature_fn: FeatureFn | None = None,
        windows_per_record: int = 1,
    ) -> None:
        if windows_per_record < 1:
            raise ValueError(f"windows_per_record must be at least 1, got {windows_per_record}")
        self.cache = cache
        self.windows_per_record = windows_per_record
        self.all_targets = targets
        self.indices = list(range(len(cache))) if indices is None else list(indices)
        self.window = cache.cfg.window_samples
        self.feature_fn = feature_fn
        self.items = [
            (j, s)
            for j, i in enumerate(self.indices)
            for s in window_starts(int(cache.lengths[i]), self.window, max_windows)
        ]

    @property
    def targets(self) -> np.ndarray:
        return self.all_targets[self.indices]

    @property
    def n_records(self) -> int:
        return len(self.indices)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple:
        j, s = self.items[k]
        i = self.indices[j]
        x = np.array(fit_length(self.cache.get(i)[:, s : s + self.window], self.window), dtype=np.float32, order="C")
        y = torch.from_numpy(self.all_targets[i])
        if self.feature_fn is not None:
            return torch.from_numpy(x), torch.from_numpy(self.feature_fn(x).astype(np.float32)), y, j
        return torch.from_numpy(x), y, j
