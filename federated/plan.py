"""The federation plan: which cached records each client trains and validates on.

Written by the training command before a simulation starts and read by each ClientApp, so that a
client process opens only its own slice of the record cache (it never sees another client's ids).
A deployment node (a hospital) instead builds a one-client plan from its own data folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from cpsc2018.cache import RecordCache
from cpsc2018.util import atomic_write_bytes, atomic_write_text


@dataclass(frozen=True)
class ClientPlan:
    name: str
    train: list[int]
    val: list[int]


@dataclass(frozen=True)
class Plan:
    cache_folder: str
    targets_file: str
    clients: list[ClientPlan]

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self)))


def write_plan(folder: Path, cache: RecordCache, targets: np.ndarray, clients: list[ClientPlan]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    targets_file = folder / "targets.npy"
    import io

    buf = io.BytesIO()
    np.save(buf, targets)
    atomic_write_bytes(targets_file, buf.getvalue())
    plan = Plan(str(cache.folder), str(targets_file), clients)
    path = folder / "plan.json"
    plan.save(path)
    return path


@lru_cache(maxsize=4)
def load_plan(path: str) -> tuple[Plan, RecordCache, np.ndarray]:
    """Memoised per process: a simulation actor serves many rounds of the same plan."""
    raw = json.loads(Path(path).read_text())
    plan = Plan(raw["cache_folder"], raw["targets_file"], [ClientPlan(**c) for c in raw["clients"]])
    return plan, RecordCache.open(plan.cache_folder), np.load(plan.targets_file)
