"""Hand-crafted ECG features: numpy/scipy for the hybrid model and the app, neurokit2 for the baseline.

* :func:`window_features` works on one preprocessed window (12 leads, z-scored, ``fs`` Hz, 10 s). R
  peaks come from ``scipy.signal.find_peaks`` on a QRS energy envelope pooled over the leads; from
  them the rhythm features that separate AF (irregular RR) and premature beats (short-long RR pairs,
  odd beat shapes), and a QRS width proxy. numpy and scipy only: training (``federated.features_hook``),
  ``evaluate``, export and the phone app all compute them with this very function, and the names in
  :data:`FEATURE_NAMES` travel in the checkpoint and the ONNX metadata. Changing what it computes
  changes the input of every hybrid model already trained (the shipped one included): retrain them.
* :func:`expert_features` works on a whole record in mV at its own rate: rhythm from R peaks, PR,
  QT and P-wave presence, and the measurements of 12-lead ECG programs on the median beat (QRS
  duration, axis, ST/T levels, bundle-branch morphology, P-wave amplitude and consistency), premature
  beats (coupling interval, pause, QRS and P wave against the median beat). Two engines: ``numpy``
  (the default; numpy/scipy only: :func:`detect_r_peaks`, a multi-lead Pan-Tompkins detector, and the
  P wave and T end measured on the median beat), which the app and hybrid models can run; and
  ``neurokit2`` (neurokit2's R peaks and wavelet delineation), the first classical baseline, kept for
  comparison (``benchmarks/features_cv.py``: the two give the same macro F1 in cross-validation).
  neurokit2 is imported inside its engine only, so this module stays importable (the app) where
  neurokit2 is not installed.
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


# --- expert features (classical baseline, hybrid models, the app) --------------------------------

EXPERT_NAMES: tuple[str, ...] = (
    # Rhythm, from the R peaks (numpy: the multi-lead detector :func:`detect_r_peaks`; neurokit2: its
    # peaks of lead II).
    "hr", "rr_sdnn", "rr_rmssd", "rr_pnn50", "rr_cv", "rr_max_jump", "rr_irregularity", "premature_fraction",
    # PR (I-AVB > 200 ms), QT and Bazett's QTc, timed from the QRS onset of the median beat, and the
    # fraction of beats with a P wave. numpy: P wave of the 0.5-15 Hz median beat of II and V1, T end by
    # the tangent method, per-beat P waves matched to the median one; neurokit2: its wavelet delineation.
    "pr_ms", "qt_ms", "qtc_ms", "p_present",
    # The median beat of the 12 leads.
    "qrs_ms", "p_peak_to_qrs_ms", "p_amp_II", "p_corr", "qrs_axis_deg",
    "st_II", "st_V1", "st_V2", "st_V5", "st_V6", "t_II", "t_V1", "t_V2", "t_V5", "t_V6",
    "qrs_area_I", "qrs_area_V1", "qrs_area_V6", "v1_terminal_r", "v6_terminal_s", "i_terminal_s",
    # Beat-to-beat morphology: PVCs are premature and look different, PACs are premature and alike.
    "beat_corr_min", "odd_beat_fraction", "premature_odd_fraction", "premature_same_fraction",
    # numpy engine only (NaN with engine="neurokit2", which keeps the first baseline's features):
    # the most premature beat's coupling interval (RR before it / median RR) and the pause around it
    # ((RR before + RR after) / 2 median RR: ~1 for a PVC's full compensatory pause, less for a PAC,
    # which resets the sinus node), how alike its QRS and its P wave are to the median beat's (a PVC
    # has an odd QRS and no P wave; a PAC a normal QRS after an odd, early P wave), the beat-to-beat
    # spread of the P-to-QRS time (AF and wandering/ectopic atrial beats), the P-wave amplitude in V1,
    # the R-peak times of V1 and V6 (the late activation of the blocked ventricle: RBBB's late R' in
    # V1, LBBB's delayed R in V6) and the QRS duration on the spatial energy of the 12 leads.
    "coupling_min", "pause_ratio", "premature_qrs_corr", "premature_p_corr", "pr_sd_ms", "p_amp_V1",
    "r_time_V1_ms", "r_time_V6_ms", "qrs_energy_ms",
)
NUMPY_ONLY_NAMES = frozenset(EXPERT_NAMES[EXPERT_NAMES.index("coupling_min"):])
ENGINES: tuple[str, ...] = ("numpy", "neurokit2")
_LEAD = {"I": 0, "II": 1, "aVF": 5, "V1": 6, "V2": 7, "V3": 8, "V5": 10, "V6": 11}
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


def _median0(a: np.ndarray) -> np.ndarray:
    """``np.median(a, axis=0)`` by partial sorting (several times faster on (beats, leads, samples))."""
    n = a.shape[0]
    m = n // 2
    if n % 2:
        return np.partition(a, m, axis=0)[m]
    part = np.partition(a, (m - 1, m), axis=0)
    return (part[m - 1] + part[m]) / 2


def _beat_matrix(y: np.ndarray, fs: float, peaks: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Beats ``(n, leads, 1 s)`` with R at ``pre`` = 400 ms, the mask of peaks that have a whole window."""
    pre, post = int(0.4 * fs), int(0.6 * fs)
    inside = (peaks >= pre) & (peaks + post <= y.shape[1])
    if inside.sum() < 2:
        return None
    idx = peaks[inside][:, None] + np.arange(-pre, post)[None, :]
    return np.moveaxis(y[:, idx], 1, 0), inside, pre


def _median_beat_features(
    y: np.ndarray, fs: float, peaks: np.ndarray, med_rr: float
) -> tuple[dict[str, float], int | None]:
    """Features of the median beat of the band-passed record ``y``; also R-to-QRS-onset in samples."""
    # Built as the first baseline built it (stacked copies, np.median): its features stay bit-exact.
    pre, post = int(0.4 * fs), int(0.6 * fs)
    inside = (peaks >= pre) & (peaks + post <= y.shape[1])
    if inside.sum() < 2:
        return {}, None
    beats = np.stack([y[:, p - pre : p + post] for p in peaks[inside]])  # (n, 12, L), R at `pre`
    f, ctx = _template_features(beats, np.median(beats, axis=0), inside, pre, fs, peaks, med_rr)
    return f, None if ctx is None else pre - ctx["qon"]


def _template_features(
    beats: np.ndarray, tmpl: np.ndarray, inside: np.ndarray, pre: int, fs: float, peaks: np.ndarray, med_rr: float
) -> tuple[dict[str, float], dict | None]:
    """Measurements of the median beat ``tmpl`` (R at ``pre``) and of each beat against it.

    Returns the features and what the numpy engine measures further from (QRS bounds, the
    baseline-corrected template, each beat's QRS correlation), None when there is no QRS to bound.
    """
    f: dict[str, float] = {}
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
    return f, {"qon": qon, "qoff": qoff, "z": z, "corr": corr}


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


# --- numpy/scipy engine ---------------------------------------------------------------------------


def _zero_phase(sos: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Forward-backward ``sosfilt`` with edge-matched initial state and no padding.

    ``sosfiltfilt`` pads and designs its initial state on every call; this is ~2x faster on 12 leads,
    and the edge transients it leaves (the first and last ~0.1 s) fall outside what is measured.
    """
    zi = sps.sosfilt_zi(sos)  # (sections, 2)
    y, _ = sps.sosfilt(sos, x, axis=-1, zi=zi[:, None, :] * x[None, :, :1])
    y = y[:, ::-1]
    y, _ = sps.sosfilt(sos, y, axis=-1, zi=zi[:, None, :] * y[None, :, :1])
    return np.ascontiguousarray(y[:, ::-1])


def _decimate(x: np.ndarray, fs: float) -> tuple[np.ndarray, int]:
    """Down to 180-360 Hz by an integer factor, through a linear-phase 45 Hz FIR (no delay left).

    Everything the features measure lies below 40 Hz, and the work rate sets the cost of the rest.
    """
    k = max(1, int(fs // 250))
    if k == 1:
        return x, 1
    h = sps.firwin(8 * k + 1, 45.0, fs=fs)
    d = (len(h) - 1) // 2  # group delay in input samples, a multiple of k
    y = sps.upfirdn(h, x, up=1, down=k, axis=-1)
    return np.ascontiguousarray(y[:, d // k : d // k + -(-x.shape[1] // k)]), k


def _moving_average(x: np.ndarray, k: int) -> np.ndarray:
    """Centred moving average of a 1-D signal over ``k`` samples (cumulative sums)."""
    if k <= 1:
        return x
    c = np.concatenate(([0.0], np.cumsum(x)))
    half = k // 2
    lo = np.clip(np.arange(len(x)) - half, 0, len(x))
    hi = np.clip(np.arange(len(x)) - half + k, 0, len(x))
    return (c[hi] - c[lo]) / np.maximum(hi - lo, 1)


def _good_leads(x: np.ndarray) -> np.ndarray:
    """Leads that carry a signal: not flat (disconnected electrode) and not constant."""
    return np.flatnonzero(np.ptp(x, axis=1) > 0.02) if x.shape[1] else np.zeros(0, dtype=int)


def _pan_tompkins(y: np.ndarray, fs: float) -> np.ndarray:
    """QRS locations (sample of the energy maximum) in the band-passed leads ``y`` (leads, T).

    After Pan and Tompkins (IEEE Trans. Biomed. Eng. 32:230, 1985): 5-15 Hz band, derivative
    squared, 150 ms moving integration; here each lead's energy is scaled by its 98th percentile and
    the leads averaged, so that a beat small in one lead still counts. Candidate peaks at least 200 ms
    apart are taken in order against adaptive signal and noise levels (threshold = noise + 1/4 of
    the gap); a candidate 200-360 ms after a beat with less than half its slope is a T wave; a gap
    longer than 1.66 mean RR is searched back at half the threshold (a missed small beat).
    """
    n = y.shape[1]
    sos = sps.butter(1, [5.0, min(15.0, 0.4 * fs)], btype="bandpass", fs=fs, output="sos")
    b = _zero_phase(sos, y)
    e = np.diff(b, axis=1, prepend=b[:, :1]) ** 2
    scale = np.percentile(e, 98, axis=1)
    use = scale > 0
    if not use.any():
        return np.zeros(0, dtype=int)
    e = e[use] / scale[use, None]
    # A clean lead is quiet between its QRS complexes (median energy ~0.1 % of the QRS level); a lead
    # buried in noise is not, and would add as many noise peaks as the clean leads add beats.
    w = 1.0 / (1.0 + 100.0 * np.median(e, axis=1))
    e = (w @ e) / w.sum()
    env = _moving_average(e, int(round(0.15 * fs)))
    refractory = int(round(0.2 * fs))
    cand, _ = sps.find_peaks(env, distance=refractory)
    if len(cand) == 0:
        return cand
    h = env[cand]
    # Slope proxy per candidate: the largest energy within 75 ms of it.
    w = max(1, int(0.075 * fs))
    slope = np.array([e[max(0, c - w) : c + w + 1].max() for c in cand])
    first = h[cand < 10 * fs] if (cand < 10 * fs).any() else h
    top = np.sort(first)[::-1]
    spk = float(top[min(len(top) - 1, 3)])  # the 4th-tallest peak of the first 10 s: a QRS, not an artefact
    npk = 0.5 * float(env[: int(10 * fs)].mean())
    thr = npk + 0.25 * (spk - npk)
    beats: list[int] = []  # indices into cand
    rejected: list[int] = []
    rr_hist: list[float] = []

    def searchback(upto: int) -> None:
        nonlocal spk, thr
        if not beats or not rr_hist:
            return
        last = cand[beats[-1]]
        rr_avg = float(np.mean(rr_hist[-8:]))
        if upto - last <= 1.66 * rr_avg:
            return
        pool = [j for j in rejected if last + refractory < cand[j] < upto - refractory and h[j] > 0.5 * thr]
        if pool:
            j = max(pool, key=lambda j: h[j])
            rr_hist.append(float(cand[j] - last))
            beats.append(j)
            rejected.remove(j)
            spk = 0.25 * h[j] + 0.75 * spk

    for i, c in enumerate(cand):
        searchback(c)
        if beats and c - cand[beats[-1]] > 2.5 * fs:
            # Nothing for 2.5 s: the signal level fell (or an artefact raised it); learn it again
            # from the peaks of the last 2.5 s.
            recent = h[(cand > c - 2.5 * fs) & (cand <= c)]
            spk = min(spk, float(recent.max()))
            npk = min(npk, 0.5 * spk)
            thr = npk + 0.25 * (spk - npk)
        if h[i] > thr:
            if beats and c - cand[beats[-1]] < 0.36 * fs and slope[i] < 0.5 * slope[beats[-1]]:
                npk = 0.125 * h[i] + 0.875 * npk  # a T wave
                rejected.append(i)
            else:
                if beats:
                    rr_hist.append(float(c - cand[beats[-1]]))
                beats.append(i)
                spk = 0.125 * min(h[i], 3.0 * spk) + 0.875 * spk  # one artefact does not blind it
        else:
            npk = 0.125 * h[i] + 0.875 * npk
            rejected.append(i)
        thr = npk + 0.25 * (spk - npk)
    searchback(n)
    # Second pass with the record's own median RR: the running average learnt at the start can be
    # wrong (a large ectopic beat every other beat keeps the sinus beats below threshold and makes
    # the average twice the true RR). Fill gaps longer than 1.6 median RR with the tallest rejected
    # peak at least 360 ms from both neighbours and a fifth as tall as the median beat.
    chosen = sorted(beats)
    if len(chosen) >= 3:
        level = 0.2 * float(np.median(h[chosen]))
        gap_min = 1.6 * float(np.median(np.diff(cand[chosen])))
        far = int(0.36 * fs)
        for _ in range(len(cand)):
            pos = cand[chosen]
            gaps = np.flatnonzero(np.diff(pos) > gap_min)
            added = False
            for g in gaps:
                inner = np.flatnonzero((cand > pos[g] + far) & (cand < pos[g + 1] - far) & (h > level))
                if len(inner):
                    chosen.append(int(inner[np.argmax(h[inner])]))
                    added = True
            if not added:
                break
            chosen.sort()
    return np.sort(cand[chosen])


def _filtered(x: np.ndarray, fs: float) -> tuple[np.ndarray, float, int]:
    """NaN-repaired, decimated, 0.5-40 Hz zero-phase band of the leads: ``(y, work rate, factor)``."""
    x = repair_nan(x)
    x, k = _decimate(x, fs)
    fw = fs / k
    if x.shape[1] > int(0.5 * fw) and fw >= 50:
        sos = sps.butter(2, [0.5, min(40.0, 0.45 * fw)], btype="bandpass", fs=fw, output="sos")
        x = _zero_phase(sos, x - x[:, :1])
    return x, fw, k


def detect_r_peaks(signal_mv: np.ndarray, fs: float) -> np.ndarray:
    """R-peak sample indices of a record ``(leads, T)`` or one lead ``(T,)``, in mV at ``fs`` Hz.

    numpy/scipy only (the app uses it): 0.5-40 Hz band (after decimation to 180-360 Hz), then the
    multi-lead Pan-Tompkins detector of :func:`_pan_tompkins` over the leads that are not flat. Each
    beat is placed at the maximum of the QRS energy envelope (the energy centre of the QRS), not moved
    to a lead's R extremum: on the 23 MIT-BIH records here that matched the reference annotations
    better (pooled sensitivity / positive predictivity within 50 ms 0.991 / 0.989, against
    0.97-0.98 for the extremum within 25-80 ms of it on the best or the first lead, whose extremum
    lies > 50 ms from the reference on wide and ectopic beats), and it is the same point of every beat
    of one shape, which keeps the median beat sharp. Never raises on a bad signal: a flat, all-NaN or
    shorter than 0.5 s one gives no peaks.
    """
    x = np.asarray(signal_mv, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or not fs > 0:
        raise ValueError(f"expected (leads, samples) or (samples,) and fs > 0, got shape {x.shape}, fs {fs}")
    y, fw, k = _filtered(x, fs)
    peaks = _peaks_at_work_rate(y, fw)
    return peaks * k


def _peaks_at_work_rate(y: np.ndarray, fw: float) -> np.ndarray:
    good = _good_leads(y)
    # Below 50 Hz the QRS (10-25 Hz) is not resolved: nothing to detect.
    if len(good) == 0 or y.shape[1] < int(0.5 * fw) or fw < 50:
        return np.zeros(0, dtype=int)
    return _pan_tompkins(y[good], fw)


def _premature(rr: np.ndarray, med: float) -> int | None:
    """Index (into the peaks) of the most premature beat that has an RR interval after it."""
    if len(rr) < 2:
        return None
    j = int(np.argmin(rr[:-1])) + 1
    return j if rr[j - 1] < 0.9 * med else None


def _numpy_beat_features(
    y: np.ndarray, fs: float, peaks: np.ndarray, med_rr: float
) -> dict[str, float]:
    """Median-beat, P-wave, T-end and premature-beat features with numpy/scipy only (work rate ``fs``)."""
    f: dict[str, float] = {}
    rr = np.diff(peaks) / fs
    j = _premature(rr, med_rr)
    f["coupling_min"] = float(rr.min() / med_rr)
    if j is not None:
        # A run of premature beats (couplet, salvo) counts as one: from the last beat before it to the
        # first beat after the pause, against as many median RR intervals.
        end = j
        while end < len(rr) - 1 and rr[end] < 0.9 * med_rr:
            end += 1
        f["pause_ratio"] = float(rr[j - 1 : end + 1].sum() / ((end - j + 2) * med_rr))
    made = _beat_matrix(y, fs, peaks)
    if made is None:
        return f
    beats, inside, pre = made
    # The median of the beats that are not premature (ectopic beats would blur the P wave).
    rr_before = np.concatenate(([med_rr], rr))[inside]
    normal = rr_before >= 0.85 * med_rr
    tmpl = _median0(beats[normal] if normal.sum() >= 2 else beats)
    bf, ctx = _template_features(beats, tmpl, inside, pre, fs, peaks, med_rr)
    f.update(bf)
    if ctx is None:
        return f
    qon, qoff, z, corr = ctx["qon"], ctx["qoff"], ctx["z"], ctx["corr"]
    ms = 1000.0 / fs
    bidx = np.flatnonzero(inside)  # peak index of each beat
    if j is not None and j in bidx:
        f["premature_qrs_corr"] = float(corr[int(np.searchsorted(bidx, j))])

    # QRS duration from the spatial energy (sum of squared derivatives of the 12 leads, 20 ms smoothing)
    # above 5 % of its peak: less sensitive than the velocity to a slurred, low-amplitude offset.
    en = _moving_average((np.diff(z, axis=1) ** 2).sum(axis=0), max(1, int(round(0.02 * fs))))
    lo, hi = max(0, pre - int(0.15 * fs)), min(len(en), pre + int(0.18 * fs))
    seg = en[lo:hi]
    if len(seg) and seg.max() > 0:
        above = np.flatnonzero(seg > 0.05 * seg.max())
        f["qrs_energy_ms"] = float((above[-1] - above[0]) * ms)
    # R-peak time (intrinsicoid deflection): QRS onset to the largest positive peak in V1 and V6.
    for lead in ("V1", "V6"):
        s = z[_LEAD[lead], qon : qoff + 1]
        if len(s) and s.max() > 0.05:
            f[f"r_time_{lead}_ms"] = float(np.argmax(s) * ms)

    # T end (tangent method) on the lead with the largest T wave among II, V2, V3, V5.
    t_lo = qoff + int(0.08 * fs)
    t_hi = min(z.shape[1] - 1, pre + int(0.75 * med_rr * fs), qoff + int(0.5 * fs))
    t_end_r: float | None = None
    if t_hi - t_lo > int(0.05 * fs):
        cands = [_LEAD[k] for k in ("II", "V2", "V3", "V5")]
        tseg = z[cands, t_lo:t_hi]
        li = int(np.argmax(np.abs(tseg).max(axis=1)))
        s = z[cands[li]]
        tp = t_lo + int(np.argmax(np.abs(tseg[li])))
        amp = s[tp]
        d = np.gradient(s)
        stop = min(len(s) - 1, tp + int(0.2 * fs))
        if stop > tp + 1 and abs(amp) > 0.02:
            down = d[tp:stop] * -np.sign(amp)  # the slope back to baseline
            m = tp + int(np.argmax(down))
            if down[m - tp] > 0:
                t_end = m + abs(s[m]) / abs(d[m])
                t_end = min(t_end, stop)
                t_end_r = t_end - pre
                f["qt_ms"] = float((t_end - qon) * ms)
                f["qtc_ms"] = f["qt_ms"] / math.sqrt(med_rr)

    # P waves: leads II and V1 low-passed at 15 Hz (P waves are slow; this drops QRS-like noise), the
    # P peak searched 60-320 ms before the QRS onset but after the previous beat's T wave.
    sos = sps.butter(2, min(15.0, 0.4 * fs), btype="lowpass", fs=fs, output="sos")
    pb = _zero_phase(sos, y[[1, 6]])
    r_to_qon = pre - qon
    t_end_r = t_end_r if t_end_r is not None else 0.42 * math.sqrt(med_rr) * fs
    start = min(r_to_qon + int(0.32 * fs), int(med_rr * fs - t_end_r))  # samples before R
    stop_ = r_to_qon + int(0.06 * fs)
    if start - stop_ < int(0.06 * fs) or start > pre:
        return f
    pidx = peaks[inside][:, None] + np.arange(-start, -r_to_qon + 1)[None, :]  # window to the QRS onset
    ps = pb[:, pidx]  # (2, beats, L)
    # Linear baseline through the window's first 20 ms (TP segment) and last 20 ms (PR segment).
    e = max(1, int(0.02 * fs))
    a0, a1 = ps[..., :e].mean(axis=-1, keepdims=True), ps[..., -e:].mean(axis=-1, keepdims=True)
    ramp = np.linspace(0.0, 1.0, ps.shape[-1])
    ps = ps - (a0 + (a1 - a0) * ramp)
    tp_ = np.median(ps[:, normal] if normal.sum() >= 2 else ps, axis=1)  # (2, L) median P wave
    amp = np.sqrt((tp_**2).sum(axis=0))
    search = slice(0, ps.shape[-1] - (stop_ - r_to_qon))
    if search.stop <= 1:
        return f
    pk = int(np.argmax(amp[search]))
    f["p_amp_V1"] = float(np.abs(tp_[1]).max())
    if amp[pk] < 0.02:  # no P wave in the median beat: none either in the beats (AF)
        f["p_present"] = 0.0
        return f
    # P onset: where the P wave falls to 20 % of its peak, within 100 ms before the peak (half of the
    # longest P wave); else the quietest point there (a P wave that runs into the T wave).
    back = max(0, pk - int(0.1 * fs))
    below = np.flatnonzero(amp[back:pk] < 0.2 * amp[pk])
    p_on = back + (int(below[-1]) if len(below) else int(np.argmin(amp[back : pk + 1])))
    f["pr_ms"] = float((ps.shape[-1] - 1 - p_on) * ms)
    # Per beat: a P wave like the median one (correlation > 0.6 over the P wave, amplitude within
    # x0.4..2.5), and where its peak lies.
    reg = slice(max(0, p_on - e), min(ps.shape[-1], pk + (pk - p_on) + e + 1))
    t = tp_[:, reg].ravel()
    b = ps[:, :, reg].transpose(1, 0, 2).reshape(ps.shape[1], -1)
    bc = b - b.mean(axis=1, keepdims=True)
    tc = t - t.mean()
    den = np.sqrt((bc**2).sum(axis=1) * (tc**2).sum()) + 1e-12
    pcorr = (bc @ tc) / den
    bamp = np.sqrt((ps[:, :, search] ** 2).sum(axis=0)).max(axis=1)
    present = (pcorr > 0.6) & (bamp > 0.4 * amp[pk]) & (bamp < 2.5 * amp[pk])
    f["p_present"] = float(present.mean())
    bpk = np.argmax((ps[:, :, search] ** 2).sum(axis=0), axis=1)
    if present.sum() >= 2:
        f["pr_sd_ms"] = float(np.std(bpk[present]) * ms)
    if j is not None and j in bidx:
        f["premature_p_corr"] = float(pcorr[int(np.searchsorted(bidx, j))])
    return f


def _expert_numpy(x: np.ndarray, fs: float, out: dict[str, float]) -> None:
    y, fw, _ = _filtered(x, fs)
    peaks = _peaks_at_work_rate(y, fw)
    if len(peaks) < 3:
        return
    rr = np.diff(peaks) / fw
    s = _rr_stats(rr)
    if not 20 <= 60.0 / s["median"] <= 250:
        return
    out.update(
        hr=60.0 / s["median"], rr_sdnn=s["sdnn"], rr_rmssd=s["rmssd"], rr_pnn50=s["pnn50"], rr_cv=s["cv"],
        rr_max_jump=s["max_jump"], rr_irregularity=s["irregularity"], premature_fraction=s["premature"],
    )
    out.update(_numpy_beat_features(y, fw, peaks, s["median"]))


def _expert_neurokit2(x: np.ndarray, fs: float, out: dict[str, float]) -> None:
    fsi = int(round(fs))
    x = repair_nan(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # neurokit2 warns freely on short or noisy signals
        found = _nk_peaks(x, fsi)
        if found is None:
            return
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


def expert_features(signal_mv: np.ndarray, fs: float, engine: str = "numpy") -> dict[str, float]:
    """The :data:`EXPERT_NAMES` features of a whole 12-lead record ``(12, T)`` in mV at ``fs`` Hz.

    ``engine="numpy"`` (the default; what the app and hybrid models use) needs numpy and scipy only;
    ``"neurokit2"`` is the first baseline's computation (neurokit2 R peaks and DWT delineation), kept
    for comparison; it leaves the numpy-only names NaN. Never raises on a bad signal (flat, noise, NaN
    samples or leads, too short): what cannot be measured is NaN, all of it when there are not at least
    3 beats at 20-250 bpm. Amplitudes in mV, times in ms, areas in mV*ms, the axis in degrees
    (-180..180). A 10 s 12-lead record at 500 Hz takes ~5 ms with the numpy engine (work rate
    250 Hz; 5-9 ms measured on a shared 2-core Xeon) and ~45 ms with neurokit2
    (``benchmarks/results/features_cv.md``).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown feature engine {engine!r}; expected one of {ENGINES}")
    x = np.asarray(signal_mv)
    if x.ndim != 2 or x.shape[0] != 12:
        raise ValueError(f"expected a 12-lead record of shape (12, samples), got shape {x.shape}")
    if not fs > 0:
        raise ValueError(f"sampling rate must be positive, got {fs}")
    out = dict.fromkeys(EXPERT_NAMES, math.nan)
    with np.errstate(all="ignore"):
        if engine == "numpy":
            _expert_numpy(x, fs, out)
        else:
            _expert_neurokit2(x, fs, out)
            out.update(dict.fromkeys(NUMPY_ONLY_NAMES, math.nan))
    return {k: float(v) if np.isfinite(v) else math.nan for k, v in out.items()}
