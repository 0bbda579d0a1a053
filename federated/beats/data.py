"""Beat data of a folder: every beat-annotated record read once, grouped by patient, split into folds."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm import tqdm

from cpsc2018.beat_dataset import BeatDataset
from cpsc2018.beats import BeatConfig, RecordBeats, find_beat_records, load_record_beats, patient_folds, patient_of
from cpsc2018.labels import AAMI
from cpsc2018.records import RecordError

log = logging.getLogger("federated")


class BeatDataError(ValueError):
    """The folder gives no beat to train or score on."""


@dataclass
class BeatData:
    cfg: BeatConfig
    root: str
    records: dict[str, RecordBeats]  # record name -> its beats, sorted by name
    skipped: list[dict]

    def subset(self, names: list[str]) -> list[RecordBeats]:
        return [self.records[n] for n in names]

    def counts(self) -> dict[str, np.ndarray]:
        return {n: np.bincount(r.labels, minlength=len(AAMI)) for n, r in self.records.items()}

    def folds(self, k: int, seed: int) -> list[list[str]]:
        return patient_folds(self.counts(), k, seed)


def load_beat_data(root: Path | str, cfg: BeatConfig = BeatConfig(), progress: bool | None = None, only: list[str] | None = None) -> BeatData:
    """Beats of every record under ``root`` with ``.atr`` annotations (or of the records named in ``only``).
    A record that cannot be read is skipped with its reason (it is listed in ``skipped``)."""
    progress = sys.stderr.isatty() if progress is None else progress
    try:
        heads = find_beat_records(root)
    except FileNotFoundError as exc:
        raise BeatDataError(str(exc)) from None
    if only is not None:
        wanted = set(only)
        heads = [h for h in heads if h.stem in wanted]
    records: dict[str, RecordBeats] = {}
    skipped: list[dict] = []
    for h in tqdm(heads, desc="reading beats", unit="rec", disable=not progress):
        try:
            rb = load_record_beats(h, cfg)
        except (RecordError, ValueError) as exc:
            skipped.append({"path": str(h), "reason": str(exc)})
            continue
        if rb.record in records:
            skipped.append({"path": str(h), "reason": f"record {rb.record} already read from another folder"})
            continue
        records[rb.record] = rb
    for s in skipped:
        log.info("skipped %s: %s", s["path"], s["reason"])
    if not records:
        raise BeatDataError(
            f"no beat-annotated record (WFDB .hea + .dat + .atr, fewer than 12 leads) under {root}"
            + (f"; {len(skipped)} skipped, first: {skipped[0]['reason']}" if skipped else "")
        )
    return BeatData(cfg, str(root), dict(sorted(records.items())), skipped)


def class_weights(counts: np.ndarray, cap: float) -> torch.Tensor | None:
    """Cross-entropy weights n_max / n_c, capped at ``cap`` (absent classes 1); None when ``cap`` <= 1
    (no weighting). The cap keeps 8 Q beats from weighing 5,000 times an N beat."""
    if cap <= 1:
        return None
    counts = np.asarray(counts, dtype=np.float64)
    w = np.where(counts > 0, counts.max() / np.maximum(counts, 1), 1.0)
    return torch.tensor(np.clip(w, 1.0, cap), dtype=torch.float32)


def beat_loader(ds: BeatDataset, batch_size: int, *, train: bool, balanced: bool = False, seed: int = 0) -> DataLoader:
    """Training: shuffled, or drawn with replacement at 1 / class count per beat (``balanced``: every
    class about equally often per epoch); evaluation: in order."""
    if not train:
        return DataLoader(ds, batch_size=max(batch_size, 512), shuffle=False)
    gen = torch.Generator().manual_seed(seed)
    sampler = None
    if balanced:
        counts = ds.class_counts(len(AAMI))
        w = 1.0 / np.maximum(counts[ds.labels.numpy()], 1)
        sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(ds), replacement=True, generator=gen)
    return DataLoader(
        ds, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, generator=gen,
        drop_last=len(ds) > batch_size,  # BatchNorm cannot train on a batch of one
    )


def patients(names: list[str]) -> list[str]:
    return sorted({patient_of(n) for n in names})
