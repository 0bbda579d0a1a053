"""Preprocessing: pure numpy/scipy functions used by training, calibration, export and the app.

The phone must see exactly what the model was trained on, so this module is the only place the
signal is changed, it imports no torch, and its :class:`PreprocessConfig` travels inside every
checkpoint and every ONNX file (``to_dict``/``from_dict``).

Pipeline of :func:`preprocess`: repair NaN samples -> band-pass -> mains notch -> resample -> per-lead
standardisation. :func:`windows` then cuts fixed-length windows for the model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from fractions import Fraction

import numpy as np
from scipy import signal as sps


@dataclass(frozen=True)
class PreprocessConfig:
    """How a record becomes model input. Saved in checkpoints and ONNX metadata."""

    # 250 Hz keeps the QRS complex (energy up to ~40 Hz) and P waves well resolved while cutting
    # the compute of a 500 Hz input by half; PTB-XL/CPSC studies show little gain above 250 Hz, and
    # DECISIONS.md bounds training here to 100-250 Hz.
    fs: float = 250.0
    # 10 s is the length of every PTB-XL/Georgia/Chapman record and the median CPSC2018 one; it holds
    # 8-15 beats, enough to see rhythm irregularity (AF) and an occasional premature beat (PAC/PVC).
    window_s: float = 10.0
    # 0.5 Hz removes baseline wander and electrode drift; 40 Hz removes mains (50/60 Hz) and EMG
    # noise while keeping QRS morphology (bundle branch blocks) intact.
    band_low_hz: float = 0.5
    band_high_hz: float = 40.0
    # Order-2 Butterworth run forwards and backwards (zero phase: no shift of the P-QRS timing that
    # defines I-AVB); the effective order is 4.
    filter_order: int = 2
    # Mains interference (50 Hz in Europe/China, 60 Hz in the Americas) sits just above the band
    # edge, where the gentle Butterworth only halves it: notch both out (Q = 30, ~2 Hz wide).
    notch_hz: tuple[float, ...] = (50.0, 60.0)
    # "zscore": per lead, per record. Gains and electrode contact differ between hospitals and
    # devices; standardising removes that site effect, which matters most for federated training.
    # "none" keeps mV (clipped), for models that need absolute amplitudes.
    normalize: str = "zscore"
    # Records shorter than this are refused: a few beats cannot show a rhythm. Records between this
    # and the window are zero-padded at the end.
    min_duration_s: float = 2.0

    def __post_init__(self) -> None:
        if self.fs <= 0 or self.window_s <= 0:
            raise ValueError(f"fs and window_s must be positive, got fs={self.fs}, window_s={self.window_s}")
        if not 0 <= self.band_low_hz < self.band_high_hz < self.fs / 2:
            raise ValueError(
                f"filter band must satisfy 0 <= low < high < fs/2 = {self.fs / 2}, "
                f"got {self.band_low_hz}-{self.band_high_hz} Hz"
            )
        if self.normalize not in ("zscore", "none"):
            raise ValueError(f"normalize must be 'zscore' or 'none', got {self.normalize!r}")

    @property
    def window_samples(self) -> int:
        return int(round(self.fs * self.window_s))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["notch_hz"] = list(self.notch_hz)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing parameter(s) {sorted(unknown)}; known: {sorted(known)}")
        data = dict(data)
        if "notch_hz" in data:
            data["notch_hz"] = tuple(float(f) for f in data["notch_hz"])  # JSON gives a list
        return cls(**data)


# Evaluation, calibration and the app score a record on at most this many evenly spaced windows and
# take the maximum probability: 6 x 10 s covers every PTB-XL/Georgia/Chapman record and all but the
# longest CPSC2018 ones (up to 60 s), while bounding the work per record on a phone.
EVAL_MAX_WINDOWS = 6


class SignalTooShort(ValueError):
    """The record is shorter than ``min_duration_s``."""


def repair_nan(x: np.ndarray) -> np.ndarray:
    """Linearly interpolate NaN/inf samples per lead; a lead with no finite sample becomes zero."""
    x = np.array(x, dtype=np.float64, copy=True)
    for lead in x:
        bad = ~np.isfinite(lead)
        if not bad.any():
            continue
        if bad.all():
            lead[:] = 0.0
            continue
        idx = np.arange(lead.size)
        lead[bad] = np.interp(idx[bad], idx[~bad], lead[~bad])
    return x


def bandpass(x: np.ndarray, fs: float, low: float, high: float, order: int) -> np.ndarray:
    """Zero-phase Butterworth band-pass along time. Very short signals are only mean-removed."""
    high = min(high, 0.45 * fs)  # a 100 Hz source cannot be low-passed at 40 Hz's full width
    sos = sps.butter(order, [low, high] if low > 0 else high, btype="bandpass" if low > 0 else "lowpass", fs=fs, output="sos")
    padlen = 3 * (2 * len(sos) + 1)
    if x.shape[-1] <= padlen:
        return x - x.mean(axis=-1, keepdims=True)
    return sps.sosfiltfilt(sos, x, axis=-1)


def notch(x: np.ndarray, fs: float, freqs: tuple[float, ...], q: float = 30.0) -> np.ndarray:
    """Zero-phase IIR notch at each mains frequency below Nyquist."""
    for f in freqs:
        if 0 < f < fs / 2 and x.shape[-1] > 3 * 3:
            b, a = sps.iirnotch(f, q, fs=fs)
            x = sps.filtfilt(b, a, x, axis=-1)
    return x


def resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling (anti-aliased) by the exact rational factor, e.g. 500 -> 250 Hz."""
    if fs_in == fs_out:
        return x
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    return sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)


def normalize(x: np.ndarray, method: str) -> np.ndarray:
    if method == "none":
        return np.clip(x, -10.0, 10.0)  # mV; anything beyond is an artefact
    mean = x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    # A flat lead (disconnected electrode) stays zero instead of blowing up noise by 1/eps.
    return np.where(std > 1e-3, (x - mean) / np.maximum(std, 1e-3), 0.0)


def preprocess(signal: np.ndarray, fs: float, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """A whole record ``(n_leads, T)`` in mV at ``fs`` -> float32 ``(n_leads, T')`` at ``cfg.fs``."""
    signal = np.asarray(signal)
    if signal.ndim != 2:
        raise ValueError(f"expected a 2-D signal (leads, samples), got shape {signal.shape}")
    if fs <= 0:
        raise ValueError(f"sampling rate must be positive, got {fs}")
    duration = signal.shape[1] / fs
    if duration < cfg.min_duration_s:
        raise SignalTooShort(f"record is {duration:.2f} s long; at least {cfg.min_duration_s:g} s is needed")
    x = repair_nan(signal)
    # Filter at the source rate (before decimation) so the anti-alias and band edges act on the
    # full-bandwidth signal; resample_poly adds its own anti-alias filter too.
    x = bandpass(x, fs, cfg.band_low_hz, cfg.band_high_hz, cfg.filter_order)
    x = notch(x, fs, cfg.notch_hz)
    x = resample(x, fs, cfg.fs)
    x = normalize(x, cfg.normalize)
    return np.ascontiguousarray(x, dtype=np.float32)


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad at the end (or cut the end) to exactly ``n`` samples."""
    t = x.shape[-1]
    if t == n:
        return x
    if t > n:
        return x[..., :n]
    pad = np.zeros((*x.shape[:-1], n - t), dtype=x.dtype)
    return np.concatenate([x, pad], axis=-1)


def window_starts(n_samples: int, window: int, max_windows: int | None = None) -> list[int]:
    """Deterministic, evenly spaced window starts covering the record (overlapping if needed).

    A record of length T gets ceil(T / window) windows, the first at 0 and the last ending at T,
    so nothing is left out; a record shorter than the window gets one (padded) window.
    """
    if n_samples <= window:
        return [0]
    count = int(np.ceil(n_samples / window))
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 1:
        return [(n_samples - window) // 2]
    return [int(round(s)) for s in np.linspace(0, n_samples - window, count)]


def windows(x: np.ndarray, cfg: PreprocessConfig, max_windows: int | None = None) -> np.ndarray:
    """Preprocessed ``(n_leads, T)`` -> ``(n_windows, n_leads, window)`` float32, deterministic."""
    w = cfg.window_samples
    return np.stack([fit_length(x[:, s : s + w], w) for s in window_starts(x.shape[1], w, max_windows)])


def random_crop(x: np.ndarray, window: int, rng: np.random.Generator) -> np.ndarray:
    """A random window (training); a short record is zero-padded at the end."""
    t = x.shape[-1]
    if t <= window:
        return fit_length(x, window)
    start = int(rng.integers(0, t - window + 1))
    return x[..., start : start + window]
