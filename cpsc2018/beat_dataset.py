"""torch Dataset of heartbeats: (window, RR features, AAMI class) per beat.

Kept apart from :mod:`cpsc2018.beats` because it imports torch, which the app cannot. Dataset facts:
MIT-BIH Arrhythmia Database (Moody & Mark, IEEE EMB 20:45, 2001), 360 Hz resampled to ``BeatConfig.fs``,
leads MLII then the record's other lead, five AAMI EC57 classes (N, S, V, F, Q) in ``cpsc2018.labels.AAMI``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from cpsc2018.beats import RecordBeats


class BeatDataset(Dataset):
    """The beats of some records, concatenated; items ``(window [leads, W], rr [n_rr], class)``."""

    def __init__(self, records: Sequence[RecordBeats]) -> None:
        if not records:
            raise ValueError("no record given: a beat dataset needs at least one record")
        self.records = [r.record for r in records]
        self.windows = torch.from_numpy(np.concatenate([r.windows for r in records]))
        self.rr = torch.from_numpy(np.concatenate([r.rr for r in records]))
        self.labels = torch.from_numpy(np.concatenate([r.labels for r in records]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.windows[i], self.rr[i], self.labels[i]

    def class_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels.numpy(), minlength=num_classes)
