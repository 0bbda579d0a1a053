"""The record type every reader returns, the one error type for unreadable files, lead facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cpsc2018.labels import Labelled

# Standard 12-lead order. Every 12-lead reader returns its leads in this order; models, the
# preprocessing and the app rely on it, so it is defined here only.
LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


class RecordError(Exception):
    """A record that cannot be read. The message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class Beats:
    """Reference beat annotations (MIT-BIH): sample index and WFDB beat symbol of each beat."""

    samples: np.ndarray
    symbols: tuple[str, ...]


@dataclass(frozen=True)
class Record(Labelled):
    """One recording: signal in mV, float32 ``(n_leads, T)``, plus what is known about it.

    ``codes`` are the source's own label codes in ``code_system`` (see ``cpsc2018.labels``);
    ``classes`` are the target classes they map to (any label set). ``patient_id`` falls back to
    the record id where the source does not say (CinC 2020-2021 headers carry no patient id).
    """

    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    record_id: str
    patient_id: str
    site: str
    source_format: str
    path: str
    codes: tuple[str, ...] = ()
    code_system: str = "cpsc_text"
    age: float | None = None
    sex: str | None = None
    beats: Beats | None = field(default=None, repr=False)

    @property
    def duration_s(self) -> float:
        return self.signal.shape[1] / self.fs


def canonical_lead(name: str) -> str:
    """Map a lead name as written in a header ('AVR', 'avr', 'aVR') to the standard spelling."""
    key = name.strip().upper()
    for lead in LEADS:
        if lead.upper() == key:
            return lead
    return name.strip()


def to_standard_order(signal: np.ndarray, names: list[str] | tuple[str, ...], path: Path | str) -> np.ndarray:
    """Reorder a 12-lead ``(n_leads, T)`` signal into ``LEADS`` order; error if leads are missing."""
    if signal.shape[0] != len(LEADS):
        raise RecordError(path, f"expected 12 leads, got {signal.shape[0]}")
    canon = [canonical_lead(n) for n in names]
    missing = [lead for lead in LEADS if lead not in canon]
    if missing:
        raise RecordError(path, f"lead(s) {', '.join(missing)} missing; header names {', '.join(names)}")
    return signal[[canon.index(lead) for lead in LEADS]]


def check_signal(signal: np.ndarray, path: Path | str) -> np.ndarray:
    """Final checks shared by all readers: non-empty, some real signal; returns float32.

    NaN samples inside a lead are kept for the preprocessing to repair (it interpolates them), but a
    record where every lead is NaN or flat carries no information and is reported as unreadable.
    """
    if signal.ndim != 2 or signal.shape[1] == 0:
        raise RecordError(path, f"empty signal (shape {signal.shape})")
    signal = np.asarray(signal, dtype=np.float32)
    finite = np.isfinite(signal)
    if not finite.any():
        raise RecordError(path, "every sample is NaN or infinite")
    spread = [float(np.ptp(row[ok])) if ok.any() else 0.0 for row, ok in zip(signal, finite)]
    if max(spread) <= 1e-6:
        raise RecordError(path, "every lead is flat (constant signal)")
    return signal
