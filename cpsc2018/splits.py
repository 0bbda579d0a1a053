"""Train/validation/test splits by patient, stratified over the multi-label targets; splits by site.

No patient is in two splits: recordings of one patient are strongly correlated, and a model scored
on a patient it trained on looks better than it will on the next hospital's patients.

Stratification follows iterative stratification (Sechidis et al., ECML PKDD 2011) applied to
patient groups: the rarest label is placed first, each group goes to the split that still needs
most of that label (ties broken by the split's remaining size, then by a seeded random order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from cpsc2018.catalog import Entry
from cpsc2018.labels import label_names

SPLITS: tuple[str, ...] = ("train", "val", "test")
E = TypeVar("E", bound=Entry)


def _groups(entries: Sequence[E], seed: int, label_set: str) -> tuple[list[list[E]], np.ndarray, np.ndarray, np.random.Generator]:
    """Patients in a seeded random order: their records, multi-hot labels (any record) and sizes."""
    groups: dict[str, list[E]] = {}
    for e in entries:
        groups.setdefault(e.patient_id, []).append(e)
    rng = np.random.default_rng(seed)
    names = sorted(groups)
    order = rng.permutation(len(names))
    patients = [groups[names[i]] for i in order]
    n_labels = len(label_names(label_set))
    y = np.array([np.max([g.targets(label_set) for g in recs], axis=0) for recs in patients]).reshape(-1, n_labels)
    size = np.array([len(recs) for recs in patients], dtype=float)
    return patients, y, size, rng


def _stratified_assign(y: np.ndarray, size: np.ndarray, frac: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Part index of each patient group: iterative stratification over labels, then over size."""
    n_parts = len(frac)
    need_label = frac[:, None] * (y * size[:, None]).sum(axis=0)[None, :]  # (part, label) records wanted
    need_size = frac * size.sum()
    assign = np.full(len(y), -1)
    remaining = set(range(len(y)))
    while remaining:
        idx = np.array(sorted(remaining))
        counts = (y[idx] > 0).sum(axis=0)
        # Pick the rarest label still present among unassigned patients; none left -> by size only.
        present = np.where(counts > 0)[0]
        if present.size:
            label = present[np.argmin(counts[present])]
            batch = [i for i in idx if y[i, label]]
        else:
            label = None
            batch = list(idx)
        for i in batch:
            if label is not None:
                score = np.stack([need_label[:, label], need_size], axis=1)
            else:
                score = np.stack([need_size, need_size], axis=1)
            # Lexicographic: most needed label count, then most needed size, then a seeded tie-break.
            tie = rng.random(n_parts)
            best = max(
                range(n_parts),
                key=lambda s: (score[s, 0], score[s, 1], tie[s]) if frac[s] > 0 else (-np.inf,) * 3,
            )
            assign[i] = best
            need_label[best] -= y[i] * size[i]
            need_size[best] -= size[i]
            remaining.discard(i)
    return assign


def split_by_patient(
    entries: Sequence[E],
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    label_set: str = "six",
) -> dict[str, list[E]]:
    """Deterministic (by ``seed``) patient-level split into ``train``/``val``/``test``."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    patients, y, size, rng = _groups(entries, seed, label_set)
    assign = _stratified_assign(y, size, np.asarray(fractions, dtype=float), rng)
    out: dict[str, list[E]] = {s: [] for s in SPLITS}
    for i, recs in enumerate(patients):
        out[SPLITS[assign[i]]].extend(recs)
    for s in SPLITS:
        out[s].sort(key=lambda e: e.key)
    return out


def patient_folds(
    entries: Sequence[E],
    *,
    k: int = 5,
    seed: int = 0,
    label_set: str = "six",
    val_fraction: float = 0.15,
) -> list[dict[str, list[E]]]:
    """``k`` cross-validation folds by patient, stratified over the labels (DECISIONS: 5 folds, seed 0).

    Fold ``i`` is ``{"train", "val", "test"}``: ``test`` is the i-th of ``k`` patient-disjoint parts
    (the test parts partition ``entries``); the other parts are split again by patient into
    ``val`` (``val_fraction`` of them: model selection and thresholds) and ``train``. A record
    without a patient id is its own patient (the catalog gives it one). Deterministic by ``seed``.
    """
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    patients, y, size, rng = _groups(entries, seed, label_set)
    if len(patients) < k:
        raise ValueError(f"{len(patients)} patients cannot fill {k} folds")
    assign = _stratified_assign(y, size, np.full(k, 1.0 / k), rng)
    folds: list[dict[str, list[E]]] = []
    for i in range(k):
        rest = [idx for idx in range(len(patients)) if assign[idx] != i]
        sub = _stratified_assign(y[rest], size[rest], np.array([1 - val_fraction, val_fraction]), rng)
        fold: dict[str, list[E]] = {"train": [], "val": [], "test": []}
        for idx in range(len(patients)):
            if assign[idx] == i:
                fold["test"].extend(patients[idx])
        for j, idx in enumerate(rest):
            fold["train" if sub[j] == 0 else "val"].extend(patients[idx])
        for part in fold.values():
            part.sort(key=lambda e: e.key)
        folds.append(fold)
    return folds


def split_by_site(entries: Sequence[E]) -> dict[str, list[E]]:
    """Group records by source site (each a natural federated client / held-out hospital)."""
    out: dict[str, list[E]] = {}
    for e in entries:
        out.setdefault(e.site, []).append(e)
    return dict(sorted(out.items()))
