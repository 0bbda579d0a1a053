"""From a data folder to datasets: scan, patient split, cache, per-client subsets, loaders.

All modes share this, so central, local and federated runs with the same seed use the same
held-out test records (recorded in every checkpoint as ``split``).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from cpsc2018.cache import DEFAULT_CACHE_DIR, RecordCache
from cpsc2018.catalog import Entry, ptbxl_rates_read, scan
from cpsc2018.dataset import EvalWindows, FeatureFn, TrainWindows, cache_targets
from cpsc2018.labels import label_names
from cpsc2018.preprocess import PreprocessConfig
from cpsc2018.splits import split_by_patient
from federated.config import TrainConfig


log = logging.getLogger("federated")


class DataError(ValueError):
    """The data folder cannot give a training set (missing, empty, no 12-lead record...)."""


@dataclass
class Experiment:
    pre: PreprocessConfig
    labels: tuple[str, ...]
    entries: list[Entry]  # in cache order
    cache: RecordCache
    targets: np.ndarray  # (n_cached, n_labels)
    split: dict[str, list[int]]  # train/val/test -> cache indices
    split_info: dict

    def keys(self, part: str) -> list[str]:
        return [self.entries[i].key for i in self.split[part]]


def prepare(cfg: TrainConfig, pre: PreprocessConfig | None = None, progress: bool | None = None) -> Experiment:
    progress = sys.stderr.isatty() if progress is None else progress
    pre = pre or PreprocessConfig()
    root = Path(cfg.data)
    try:
        catalog = scan(root, ptbxl_rate=cfg.ptbxl_rate, progress=progress)
    except FileNotFoundError as exc:
        raise DataError(str(exc)) from None
    twelve = [e for e in catalog.entries if e.n_leads == 12]
    if not twelve:
        raise DataError(
            f"no readable 12-lead record under {root} ({len(catalog.entries)} readable records, "
            f"{len(catalog.unreadable)} unreadable); see python -m cpsc2018.inspect --data {root}"
        )
    if cfg.max_per_site:
        twelve = sample_per_site(twelve, cfg.max_per_site, cfg.seed)
    cache = RecordCache.build(twelve, pre, cfg.cache_dir or DEFAULT_CACHE_DIR, progress=progress)
    by_key = {e.key: e for e in twelve}
    entries = [by_key[k] for k in cache.keys]
    labels = label_names(cfg.labels)
    targets = cache_targets(cache, entries, cfg.labels)
    parts = split_by_patient(entries, fractions=tuple(cfg.split_fractions), seed=cfg.seed, label_set=cfg.labels)
    pos = {e.key: i for i, e in enumerate(entries)}
    split = {name: [pos[e.key] for e in es] for name, es in parts.items()}
    if not split["train"] or not split["val"]:
        raise DataError(f"too few records under {root} for a train/validation split ({len(entries)} usable)")
    info = {
        "seed": cfg.seed,
        "fractions": list(cfg.split_fractions),
        "data": str(root),
        "val_ids": [entries[i].key for i in split["val"]],
        "test_ids": [entries[i].key for i in split["test"]],
        # What changes how a record reads: evaluate, the export gate and the app scan with it.
        "data_options": {"ptbxl_rate": cfg.ptbxl_rate},
        "ptbxl_rates_read": ptbxl_rates_read(twelve),
    }
    return Experiment(pre, labels, entries, cache, targets, split, info)


def balanced_weights(targets: np.ndarray) -> np.ndarray:
    """Sampling weight per record: the inverse frequency of its rarest positive label (records with no
    label count as one more class), so that each label, and the label-free records, are drawn about
    equally often."""
    counts = targets.sum(axis=0)
    none = targets.sum(axis=1) == 0
    inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    w = (targets * inv[None, :]).max(axis=1)
    w[none] = 1.0 / max(int(none.sum()), 1)
    return w / w.sum()


def sample_per_site(entries: list[Entry], n: int, seed: int) -> list[Entry]:
    """At most ``n`` records of each site, a seeded random sample (whole patients where possible is not
    needed: the patient split comes after). Said in the log, since figures then describe the sample."""
    rng = np.random.default_rng(seed)
    by_site: dict[str, list[Entry]] = {}
    for e in entries:
        by_site.setdefault(e.site, []).append(e)
    out: list[Entry] = []
    for site, es in sorted(by_site.items()):
        keep = es if len(es) <= n else [es[i] for i in sorted(rng.choice(len(es), n, replace=False))]
        out += keep
        if len(keep) < len(es):
            log.info("--max-per-site %d: %s sampled to %d of its %d records", n, site, len(keep), len(es))
    return out


def train_loader(
    exp: Experiment, indices: list[int], cfg: TrainConfig, feature_fn: FeatureFn | None = None
) -> DataLoader:
    ds = TrainWindows(
        exp.cache, exp.targets, indices, seed=cfg.seed, feature_fn=feature_fn, windows_per_record=cfg.windows_per_record
    )
    # One generator for shuffling and for the balanced sampler: set_epoch re-seeds it per epoch.
    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = None
    if cfg.sampler == "balanced":
        w = np.tile(balanced_weights(exp.targets[indices]), cfg.windows_per_record)
        sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(ds), replacement=True, generator=gen)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.workers,
        persistent_workers=False,
        drop_last=len(ds) > cfg.batch_size,  # BatchNorm cannot train on a batch of one
        generator=gen,
    )


def eval_loader(
    exp: Experiment, indices: list[int], cfg: TrainConfig, feature_fn: FeatureFn | None = None
) -> DataLoader:
    ds = EvalWindows(exp.cache, exp.targets, indices, max_windows=cfg.max_windows_eval, feature_fn=feature_fn)
    return DataLoader(ds, batch_size=cfg.batch_size * 2, shuffle=False, num_workers=cfg.workers)


def set_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Crops and shuffling depend only on (seed, epoch): a resumed run replays the same batches."""
    loader.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
    loader.generator.manual_seed(seed * 100_003 + epoch)  # type: ignore[union-attr]
