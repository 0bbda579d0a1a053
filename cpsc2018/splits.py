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
    groups: dict[str, list[E]] = {}
    for e in entries:
        groups.setdefault(e.patient_id, []).append(e)
    rng = np.random.default_rng(seed)
    names = sorted(groups)
    order = rng.permutation(len(names))
    patients = [names[i] for i in order]
    n_labels = len(label_names(label_set))
    y = np.array([np.max([g.targets(label_set) for g in groups[p]], axis=0) for p in patients]).reshape(-1, n_labels)
    size = np.array([len(groups[p]) for p in patients], dtype=float)
    frac = np.asarray(fractions, dtype=float)
    need_label = frac[:, None] * (y * size[:, None]).sum(axis=0)[None, :]  # (split, label) records wanted
    need_size = frac * size.sum()
    assign = np.full(len(patients), -1)
    remaining = set(range(len(patients)))
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
            tie = rng.random(3)
            best = max(range(3), key=lambda s: (score[s, 0], score[s, 1], tie[s]) if frac[s] > 0 else (-np.inf,) * 3)
            assign[i] = best
            need_label[best] -= y[i] * size[i]
            need_size[best] -= size[i]
            remaining.discard(i)
    out: dict[str, list[E]] = {s: [] for s in SPLITS}
    for i, p in enumerate(patients):
        out[SPLITS[assign[i]]].extend(groups[p])
    for s in SPLITS:
        out[s].sort(key=lambda e: e.key)
    return out


def split_by_site(entries: Sequence[E]) -> dict[str, list[E]]:
    """Group records by source site (each a natural federated client / held-out hospital)."""
    out: dict[str, list[E]] = {}
    for e in entries:
        out.setdefault(e.site, []).append(e)
    return dict(sorted(out.items()))
