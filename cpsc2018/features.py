"""Hand-crafted ECG features: numpy/scipy for the hybrid model and the app, neurokit2 for the baseline.

* :func:`window_features` works on one preprocessed window (12 leads, z-scored, ``fs`` Hz, 10 s). R
  peaks come from ``scipy.signal.find_peaks`` on a QRS energy envelope pooled over the leads; from
  them the rhythm features that separate AF (irregular RR) and premature beats (short-long RR pairs,
  odd beat shapes), and a QRS width proxy. numpy and scipy only: training (``federated.features_hook``),
  ``evaluate``, export and the phone app all compute them with this very function, and the names in
  :data:`FEATURE_NAMES` travel in the checkpoint and the ONNX metadata. Changing what it computes
  changes the input of every hybrid model already trained (the shipped one included): retrain them.
* :func:`expert_features` works on a whole record in mV at its own rate: rhythm from neurokit2's R
  peaks, P onsets and T offsets from neurokit2's wavelet delineation, and the measurements of
  12-lead ECG programs on the median beat (QRS duration, axis, ST/T levels, bundle-branch
  morphology, P-wave amplitude and consistency). It is the classical baseline's input
  (``federated.baseline``); neurokit2 is imported inside it, so this module stays importable (the app)
  where neurokit2 is not installed.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import signal as sps

from cpsc2018.preprocess import bandpass, notch, repair_nan

# Scaled to order 1 (beats/10, HR/100, width*10) so that the hybrid head starts well conditioned.
# ``valid`` is 1 when at least 3 beats were found; otherwise every feature is 0 (a neutral value the
# head learns to ignore through ``valid``). The shipped hybrid model lists exactly these names.
FEATURE_NAMES: tuple[str, ...] = (
    "valid", "n_beats", "heart_rate", "rr_mean", "rr_sdnn", "rr_rmssd", "rr_pnn50", "rr_cv",
    "rr_max_jump", "premature_fraction", "qrs_width", "beat_corr_mean", "beat_corr_min",
)


def _check_signal(x: np.ndarray, fs: float, what: str) -> None:
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"expected {what} of shape (leads >= 2, samples), got shape {x.shape}")
    if not fs > 0:
        raise ValueError(f"sampling rate must be positive, got {fs}")


def _rr_stats(rr: np.ndarray) -> dict[str, float]:
    """Rhythm statistics of RR intervals in seconds (at least two intervals).

    ``premature``: beats that come early (RR < 0.85 x median) and are followed by a longer pause
    (> 1.05 x median, the compensatory pause of a PAC/PVC), as a fraction of the RR pairs.
    """
    med = float(np.median(rr))
    drr = np.diff(rr)
    premature = np.sum((rr[:-1] < 0.85 * med) & (rr[1:] > 1.05 * med))
    return {
        "median": med,
        "sdnn": float(rr.std()),
        "rmssd": float(np.sqrt(np.mean(drr**2))),
        "pnn50": float(np.mean(np.abs(drr) > 0.05)),
        "cv": float(rr.std() / med),
        "max_jump": float(np.max(np.abs(drr)) / med),
        "irregularity": float(np.median(np.abs(drr)) / med),
        "premature": float(premature / (len(rr) - 1)),
    }


def r_peaks(x: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """R-peak sample indices of a (leads, T) window and the QRS energy envelope they were found on.

    Envelope: 5-25 Hz band (QRS energy; P and T waves and baseline drift fall below it) ->
    derivative squared, summed over the leads (a beat invisible in one lead shows in others) -> 100 ms
    moving average. Peaks: ``find_peaks`` above 0.3 x the envelope's 99th percentile (a robust "tall
    beat" level), prominence 0.2 x that, 250 ms apart (the refractory period: at most 240 bpm).
    """
    if x.shape[-1] < int(0.5 * fs):
        return np.zeros(0, dtype=int), np.zeros(0)
    sos = sps.butter(2, [5.0, min(25.0, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")
    band = sps.sosfiltfilt(sos, x, axis=-1) if x.shape[-1] > 15 else x
    energy = (np.diff(band, axis=-1) ** 2).sum(axis=0)
    k = max(1, int(0.1 * fs))
    env = np.convolve(energy, np.ones(k) / k, mode="same")
    if not np.isfinite(env).all() or env.max() <= 0:
        return np.zeros(0, dtype=int), env
    height = 0.3 * np.percentile(env, 99)
    peaks, _ = sps.find_peaks(env, height=height, distance=int(0.25 * fs), prominence=0.2 * height)
    return peaks, env


def window_features(x: np.ndarray, fs: float) -> np.ndarray:
    """``len(FEATURE_NAMES)`` float32 values of one preprocessed window ``(12, L)``, all finite.

    ``valid`` is 0 and every other value 0 when fewer than 3 beats are found (flat or noise-only
    window). Beat morphology: correlation of each beat (250 ms around R, lead II) with the median
    beat; a PVC looks different from the others and lowers the minimum. QRS width: the median width
    at half height of the energy envelope's peaks (a proxy: the 100 ms smoothing widens it).
    """
    x = np.asarray(x)
    _check_signal(x, fs, "a window")
    out = np.zeros(len(FEATURE_NAMES), dtype=np.float32)
    x = np.nan_to_num(x.astype(np.float64))
    peaks, env = r_peaks(x, fs)
    if len(peaks) < 3:
        return out
    rr = np.diff(peaks) / fs
    s = _rr_stats(rr)
    widths = sps.peak_widths(env, peaks, rel_height=0.5)[0] / fs
    half = int(0.125 * fs)
    beats = np.array([x[1, p - half : p + half] for p in peaks if half <= p < x.shape[1] - half])
    corr_mean = corr_min = 1.0
    if len(beats) >= 2:
        template = np.median(beats, axis=0)
        cs = [np.corrcoef(b, template)[0, 1] if b.std() > 0 and template.std() > 0 else 1.0 for b in beats]
        corr_mean, corr_min = float(np.nanmean(cs)), float(np.nanmin(cs))
    out[:] = [
        1.0, len(peaks) / 10.0, 60.0 / s["median"] / 100.0, s["median"], s["sdnn"], s["rmssd"], s["pnn50"],
        s["cv"], s["max_jump"], s["premature"], float(np.median(widths)) * 10.0, corr_mean, corr_min,
    ]
    return np.nan_to_num(out).astype(np.float32)


# --- expert features (classical baseline) ------------------------------------------------------

EXPERT_NAMES: tuple[str, ...] = (
    # Rhythm, from neurokit2's R peaks of lead II.
    "hr", "rr_sdnn", "rr_rmssd", "rr_pnn50", "rr_cv", "rr_max_jump", "rr_irregularity", "premature_fraction",
    # neurokit2's wavelet delineation of lead II (P onset, P peak, T offset), timed from the QRS onset
    # of the median beat: PR (I-AVB > 200 ms), QT and Bazett's QTc, fraction of beats with a P wave.
    "pr_ms", "qt_ms", "qtc_ms", "p_present",
    # The median beat of the 12 leads.
    "qrs_ms", "p_peak_to_qrs_ms", "p_amp_II", "p_corr", "qrs_axis_deg",
    "st_II", "st_V1", "st_V2", "st_V5", "st_V6", "t_II", "t_V1", "t_V2", "t_V5", "t_V6",
    "qrs_area_I", "qrs_area_V1", "qrs_area_V6", "v1_terminal_r", "v6_terminal_s", "i_terminal_s",
    # Beat-to-beat morphology: PVCs are premature and look different, PACs are premature and alike.
    "beat_corr_min", "odd_beat_fraction", "premature_odd_fraction", "premature_same_fraction",
)
_LEAD = {"I": 0, "II": 1, "aVF": 5, "V1": 6, "V2": 7, "V5": 10, "V6": 11}
# Leads tried in turn for R peaks: II (the rhythm strip), then leads that are rarely all flat.
_RHYTHM_LEADS = (1, 10, 0, 7)
_DELINEATE_BEATS = 20


def _nk_peaks(x: np.ndarray, fs: int) -> tuple[np.ndarray, np.ndarray] | None:
    """R peaks and the neurokit2-cleaned lead they were found on; None if no lead gives a rhythm."""
    import neurokit2 as nk

    for k in _RHYTHM_LEADS:
        if x[k].std() < 1e-3:  # flat: disconnected electrode
            continue
        try:
            clean = np.asarray(nk.ecg_clean(x[k], sampling_rate=fs), dtype=np.float64)
            _, info = nk.ecg_peaks(clean, sampling_rate=fs)
        except Exception:  # neurokit2 raises assorted errors (ValueError, IndexError...) on odd signals
            continue
        peaks = np.unique(np.asarray(info["ECG_R_Peaks"], dtype=int))
        if len(peaks) >= 3 and 20 <= 60 * fs / np.median(np.diff(peaks)) <= 250:
            return peaks, clean
    return None


def _qrs_bounds(tmpl: np.ndarray, fs: float, r: int) -> tuple[int, int] | None:
    """QRS onset and offset (samples) of a 12-lead median beat with its R peak at ``r``.

    Spatial velocity (sum over leads of |derivative|, 10 ms smoothing) above 10 % of its rise from
    the beat's quiet level (10th percentile), grown out from the QRS maximum across gaps < 20 ms
    (notched QRS complexes), searched within R - 120 ms .. R + 150 ms.
    """
    k = max(1, int(round(0.01 * fs)))
    sv = np.convolve(np.abs(np.diff(tmpl, axis=1)).sum(axis=0), np.ones(k) / k, mode="same")
    lo, hi = max(0, r - int(0.12 * fs)), min(len(sv), r + int(0.15 * fs))
    seg = sv[lo:hi]
    floor = float(np.percentile(sv, 10))
    if not len(seg) or seg.max() <= floor:
        return None
    above = seg > floor + 0.1 * (seg.max() - floor)
    on = off = int(np.argmax(seg))
    gap = max(1, int(0.02 * fs))
    while on > 0 and above[max(0, on - gap) : on].any():
        on = max(0, on - gap) + int(np.flatnonzero(above[max(0, on - gap) : on])[0])
    while off < len(seg) - 1 and above[off + 1 : off + 1 + gap].any():
        off = off + 1 + int(np.flatnonzero(above[off + 1 : off + 1 + gap])[-1])
    return lo + on, lo + off


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    d = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 0 else math.nan


def _median_beat_features(
    y: np.ndarray, fs: float, peaks: np.ndarray, med_rr: float
) -> tuple[dict[str, float], int | None]:
    """Features of the median beat of the band-passed record ``y``; also R-to-QRS-onset in samples."""
    f: dict[str, float] = {}
    pre, post = int(0.4 * fs), int(0.6 * fs)
    inside = (peaks >= pre) & (peaks + post <= y.shape[1])
    if inside.sum() < 2:
        return f, None
    beats = np.stack([y[:, p - pre : p + post] for p in peaks[inside]])  # (n, 12, L), R at `pre`
    tmpl = np.median(beats, axis=0)
    bounds = _qrs_bounds(tmpl, fs, pre)
    if bounds is None:
        return f, None
    qon, qoff = bounds
    ms = 1000.0 / fs
    f["qrs_ms"] = (qoff - qon) * ms
    # Isoelectric level: the PR segment just before the QRS.
    base = tmpl[:, max(0, qon - int(0.03 * fs)) : max(1, qon - int(0.01 * fs))].mean(axis=1)
    z = tmpl - base[:, None]
    qrs = slice(qon, qoff + 1)

    # P wave: 300-40 ms before the QRS onset. In AF there is none: the median beat averages the
    # fibrillatory waves out (small amplitude) and the beats disagree there (low correlation).
    pw = slice(max(0, qon - int(0.3 * fs)), max(1, qon - int(0.04 * fs)))
    p2 = z[1, pw]
    f["p_amp_II"] = float(np.max(np.abs(p2)))
    f["p_peak_to_qrs_ms"] = (qon - (pw.start + int(np.argmax(np.abs(p2))))) * ms
    tp = tmpl[[1, 6], pw]
    f["p_corr"] = float(np.nanmean([_corr(b[[1, 6], pw].ravel(), tp.ravel()) for b in beats]))

    # Axis from the net QRS amplitude (max + min) in I and aVF.
    net = {lead: float(z[_LEAD[lead], qrs].max() + z[_LEAD[lead], qrs].min()) for lead in ("I", "aVF")}
    f["qrs_axis_deg"] = math.degrees(math.atan2(net["aVF"], net["I"]))
    # ST level at J + 60 ms (mean over 20 ms); T wave: the largest deviation after the ST segment,
    # signed, before the next beat.
    st = slice(qoff + int(0.05 * fs), qoff + int(0.07 * fs))
    t_end = min(tmpl.shape[1], qoff + int(0.4 * fs), pre + int(0.7 * med_rr * fs))
    tw = slice(qoff + int(0.08 * fs), t_end)
    for lead in ("II", "V1", "V2", "V5", "V6"):
        k = _LEAD[lead]
        f[f"st_{lead}"] = float(z[k, st].mean()) if st.stop <= tmpl.shape[1] else math.nan
        if tw.stop - tw.start > 2:
            seg = z[k, tw]
            f[f"t_{lead}"] = float(seg[np.argmax(np.abs(seg))])
    # Bundle-branch blocks: LBBB has a broad negative QRS in V1 and a broad positive one in V6 and I;
    # RBBB a late R' in V1 and a late broad S in I and V6 (terminal 40 % of the QRS).
    for lead in ("I", "V1", "V6"):
        f[f"qrs_area_{lead}"] = float(z[_LEAD[lead], qrs].sum() * ms)
    late = slice(qon + int(0.6 * (qoff - qon)), qoff + 1)
    f["v1_terminal_r"] = float(z[_LEAD["V1"], late].max())
    f["v6_terminal_s"] = float(-z[_LEAD["V6"], late].min())
    f["i_terminal_s"] = float(-z[_LEAD["I"], late].min())

    # Beat-to-beat: each beat's QRS (II, V1, V5) against the median beat's.
    region = slice(max(0, qon - int(0.02 * fs)), min(tmpl.shape[1], qoff + int(0.02 * fs)))
    leads = [1, 6, 10]
    corr = np.array([_corr(b[leads, region].ravel(), tmpl[leads, region].ravel()) for b in beats])
    corr = np.nan_to_num(corr, nan=1.0)  # a flat beat region: nothing to tell apart
    odd = corr < 0.9
    idx = np.flatnonzero(inside)
    rr = np.diff(peaks) / fs
    prem = np.zeros(len(peaks), dtype=bool)  # beat j came early and was followed by a pause
    prem[1:-1] = (rr[:-1] < 0.85 * med_rr) & (rr[1:] > 1.05 * med_rr)
    f["beat_corr_min"] = float(corr.min())
    f["odd_beat_fraction"] = float(odd.mean())
    f["premature_odd_fraction"] = float(np.mean(prem[idx] & odd))
    f["premature_same_fraction"] = float(np.mean(prem[idx] & ~odd))
    return f, pre - qon


def _delineation_features(
    clean: np.ndarray, fs: int, peaks: np.ndarray, r_to_qon: int | None, med_rr: float
) -> dict[str, float]:
    """PR, QT, QTc and P presence from neurokit2's DWT delineation of one cleaned lead."""
    import neurokit2 as nk

    f: dict[str, float] = {}
    # The first beats tell PR and QT as well as all of them, and delineation (neurokit2's DWT, ~5 ms a
    # beat) is most of the cost: a 60 s record is delineated over its first 20 beats.
    peaks = peaks[:_DELINEATE_BEATS]
    end = min(len(clean), int(peaks[-1] + 0.8 * fs))
    try:
        _, waves = nk.ecg_delineate(clean[:end], peaks, sampling_rate=fs, method="dwt")
    except Exception:  # neurokit2 raises assorted errors on odd signals: leave these NaN
        return f

    def aligned(key: str) -> np.ndarray | None:
        # neurokit2 drops non-positive positions, which misaligns a list with the peaks: skip those.
        v = np.asarray(waves.get(key, []), dtype=float)
        return v if len(v) == len(peaks) else None

    p_on, p_peak, t_off = aligned("ECG_P_Onsets"), aligned("ECG_P_Peaks"), aligned("ECG_T_Offsets")
    if p_peak is not None:
        f["p_present"] = float(np.mean(np.isfinite(p_peak)))
    if r_to_qon is None:
        return f
    ms = 1000.0 / fs
    if p_on is not None:
        d = (peaks - p_on)[np.isfinite(p_on)]
        d = d[(d > r_to_qon) & (d < 0.6 * fs)]
        if len(d):
            f["pr_ms"] = (float(np.median(d)) - r_to_qon) * ms
    if t_off is not None:
        d = (t_off - peaks)[np.isfinite(t_off)]
        d = d[(d > 0) & (d < 0.8 * fs)]
        if len(d):
            f["qt_ms"] = (float(np.median(d)) + r_to_qon) * ms
            f["qtc_ms"] = f["qt_ms"] / math.sqrt(med_rr)
    return f


def expert_features(signal_mv: np.ndarray, fs: float) -> dict[str, float]:
    """The :data:`EXPERT_NAMES` features of a whole 12-lead record ``(12, T)`` in mV at ``fs`` Hz.

    Never raises on a bad signal (flat, noise, NaN samples, too short): what cannot be measured is
    NaN, all of it when no lead gives at least 3 beats at 20-250 bpm. Amplitudes in mV, times in
    ms, areas in mV*ms, the axis in degrees (-180..180). Takes ~0.03-0.05 s for a 10 s record at 500 Hz.
    """
    x = np.asarray(signal_mv)
    if x.ndim != 2 or x.shape[0] != 12:
        raise ValueError(f"expected a 12-lead record of shape (12, samples), got shape {x.shape}")
    if not fs > 0:
        raise ValueError(f"sampling rate must be positive, got {fs}")
    out = dict.fromkeys(EXPERT_NAMES, math.nan)
    fsi = int(round(fs))
    x = repair_nan(x)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # neurokit2 warns freely on short or noisy signals
        found = _nk_peaks(x, fsi)
        if found is None:
            return out
        peaks, clean = found
        rr = np.diff(peaks) / fs
        s = _rr_stats(rr)
        out.update(
            hr=60.0 / s["median"], rr_sdnn=s["sdnn"], rr_rmssd=s["rmssd"], rr_pnn50=s["pnn50"], rr_cv=s["cv"],
            rr_max_jump=s["max_jump"], rr_irregularity=s["irregularity"], premature_fraction=s["premature"],
        )
        # The same band and mains notch as the models' preprocessing (at the record's own rate).
        y = notch(bandpass(x, fs, 0.5, 40.0, 2), fs, (50.0, 60.0))
        beat, r_to_qon = _median_beat_features(y, fs, peaks, s["median"])
        out.update(beat)
        out.update(_delineation_features(clean, fsi, peaks, r_to_qon, s["median"]))
    return {k: float(v) if np.isfinite(v) else math.nan for k, v in out.items()}
