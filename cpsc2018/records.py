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


def standard_subset(signal: np.ndarray, names: list[str] | tuple[str, ...], path: Path | str) -> tuple[np.ndarray, tuple[str, ...]]:
    """A record with some of the twelve leads (a 6-lead or single-lead device): its rows in ``LEADS``
    order and their names. Every name must be a standard lead, each once; otherwise the error names them."""
    canon = [canonical_lead(n) for n in names]
    if len(canon) != signal.shape[0]:
        raise RecordError(path, f"header names {len(canon)} leads for {signal.shape[0]} signals")
    unknown = [n for n, c in zip(names, canon) if c not in LEADS]
    if unknown:
        raise RecordError(path, f"lead(s) {', '.join(unknown)} are not among the twelve standard leads ({', '.join(LEADS)})")
    repeated = sorted({c for c in canon if canon.count(c) > 1}, key=LEADS.index)
    if repeated:
        raise RecordError(path, f"lead(s) {', '.join(repeated)} appear more than once")
    leads = tuple(lead for lead in LEADS if lead in canon)
    return signal[[canon.index(lead) for lead in leads]], leads


# When a record has too little real signal to classify. The app reported confident diseases for a
# record that was NaN except for 2 samples: preprocessing interpolates NaN, so it invented a signal.
# A lead is usable when at least half of its samples are finite: up to half can be a dropout that
# linear interpolation bridges without inventing beats that dominate the lead.
MIN_FINITE_FRACTION = 0.5
# And, when the sampling rate is known, when it has at least 2 s of finite samples: fewer than 2 s
# hold 1-3 beats, which cannot show a rhythm (the same floor as PreprocessConfig.min_duration_s).
MIN_FINITE_SECONDS = 2.0
# A record needs at least half of its leads usable (6 of 12; 1 of MIT-BIH's 2). The models see all 12
# leads: with more missing, bundle-branch morphology (V1, V6, I) and P waves are mostly gone, and the
# zeroed leads are a pattern never seen in training. Fully missing leads in a record that passes are
# zeroed by preprocess.repair_nan, partly missing ones interpolated.
MIN_USABLE_LEAD_FRACTION = 0.5


def check_signal(signal: np.ndarray, path: Path | str, fs: float | None = None) -> np.ndarray:
    """Final checks shared by all readers: non-empty, enough real signal; returns float32.

    NaN samples inside a lead are kept for the preprocessing to repair (it interpolates them, and zeroes
    a lead with none finite), but a record where fewer than ``MIN_USABLE_LEAD_FRACTION`` of the leads
    are usable (``MIN_FINITE_FRACTION`` of their samples finite and, if ``fs`` is given,
    ``MIN_FINITE_SECONDS`` of them), or where every lead is flat, carries too little information and
    is reported as unreadable.
    """
    if signal.ndim != 2 or signal.shape[1] == 0:
        raise RecordError(path, f"empty signal (shape {signal.shape})")
    signal = np.asarray(signal, dtype=np.float32)
    finite = np.isfinite(signal)
    if not finite.any():
        raise RecordError(path, "every sample is NaN or infinite")
    n_leads, n_samples = signal.shape
    n_finite = finite.sum(axis=1)
    usable = n_finite >= MIN_FINITE_FRACTION * n_samples
    if fs is not None and fs > 0:
        usable &= n_finite >= MIN_FINITE_SECONDS * fs
    need = int(np.ceil(MIN_USABLE_LEAD_FRACTION * n_leads))
    if int(usable.sum()) < need:
        seconds = f" and at least {MIN_FINITE_SECONDS:g} s" if fs is not None and fs > 0 else ""
        worst = ", ".join(f"lead {i + 1} {100 * k / n_samples:.0f} %" for i, k in enumerate(n_finite) if not usable[i])
        raise RecordError(
            path,
            f"only {int(usable.sum())} of {n_leads} leads have at least {MIN_FINITE_FRACTION:.0%} of their samples "
            f"finite{seconds}; at least {need} are needed (finite samples: {worst})",
        )
    spread = [float(np.ptp(row[ok])) if ok.any() else 0.0 for row, ok in zip(signal, finite)]
    if max(spread) <= 1e-6:
        raise RecordError(path, "every lead is flat (constant signal)")
    return signal
