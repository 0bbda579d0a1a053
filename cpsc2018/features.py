"""Hand-crafted ECG features: numpy/scipy for the hybrid model and the app, neurokit2 for the baseline.

* :func:`window_features` works on one preprocessed window (12 leads, z-scored, ``fs`` Hz). R peaks
  come from ``scipy.signal.find_peaks`` on a QRS energy envelope pooled over the leads; from them the
  rhythm features that separate AF (irregular RR) and premature beats (short-long RR pairs, odd beat
  shapes). numpy and scipy only: the phone app computes them with this very function.
* :func:`expert_features` works on a whole record in mV at its own rate, with neurokit2's delineation
  (PR interval, QRS width, P-wave presence, QT), the QRS axis, ST/T levels and bundle-branch
  morphology. It is the classical baseline's input (``federated.baseline``); neurokit2 is imported
  inside it, so this module stays importable where neurokit2 is not installed.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import signal as sps

FEATURE_NAMES: tuple[str, ...] = (
    "valid", "n_beats", "heart_rate", "rr_mean", "rr_sdnn", "rr_rmssd", "rr_pnn50", "rr_cv",
    "rr_max_jump", "premature_fraction", "qrs_width", "beat_corr_mean", "beat_corr_min",
)


def r_peaks(x: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """R-peak sample indices of a (leads, T) window: QRS energy (5-25 Hz derivative squared, summed
    over leads, 100 ms moving average) -> find_peaks with a 250 ms refractory distance."""
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
    """``len(FEATURE_NAMES)`` float32 values, all finite. ``valid`` is 0 (and the rest neutral) when
    fewer than 3 beats are found (flat or noise-only window)."""
    out = np.zeros(len(FEATURE_NAMES), dtype=np.float32)
    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    peaks, env = r_peaks(x, fs)
    if len(peaks) < 3:
        return out
    rr = np.diff(peaks) / fs
    med = float(np.median(rr))
    drr = np.diff(rr)
    premature = np.sum((rr[:-1] < 0.85 * med) & (rr[1:] > 1.05 * med)) if len(rr) > 1 else 0
    # QRS width proxy: width at half height of the QRS energy envelope around each peak (median, s).
    widths = sps.peak_widths(env, peaks, rel_height=0.5)[0] / fs
    # Beat morphology: correlation of each beat (250 ms around R, lead II) with the median beat.
    half = int(0.125 * fs)
    beats = np.array([x[1, p - half : p + half] for p in peaks if half <= p < x.shape[1] - half])
    corr_mean = corr_min = 1.0
    if len(beats) >= 2:
        template = np.median(beats, axis=0)
        cs = [np.corrcoef(b, template)[0, 1] if b.std() > 0 and template.std() > 0 else 1.0 for b in beats]
        corr_mean, corr_min = float(np.nanmean(cs)), float(np.nanmin(cs))
    out[:] = [
        1.0, len(peaks) / 10.0, 60.0 / med / 100.0, med, rr.std(), np.sqrt(np.mean(drr**2)) if len(drr) else 0.0,
        np.mean(np.abs(drr) > 0.05) if len(drr) else 0.0, rr.std() / med, np.max(np.abs(drr)) / med if len(drr) else 0.0,
        premature / max(len(rr) - 1, 1), float(np.median(widths)) * 10.0, corr_mean, corr_min,
    ]
    # Scaled to order 1 (beats/10, HR/100, width*10) so that the hybrid head starts well conditioned.
    return np.nan_to_num(out).astype(np.float32)


EXPERT_NAMES: tuple[str, ...] = (
    "hr", "rr_sdnn", "rr_rmssd", "rr_cv", "rr_max_jump", "premature_fraction", "pnn50",
    "pr_ms", "qrs_ms", "qt_ms", "p_present", "qrs_axis_deg",
    "st_II", "st_V1", "st_V2", "st_V5", "st_V6", "t_II", "t_V1", "t_V5", "t_V6",
    "v1_terminal_r", "v6_s_depth", "i_s_depth", "qrs_width_v1_ms", "beat_corr_min",
)
_LEAD = {"I": 0, "II": 1, "aVF": 5, "V1": 6, "V2": 7, "V5": 10, "V6": 11}


def expert_features(signal_mv: np.ndarray, fs: float) -> dict[str, float]:
    """Expert features of a whole 12-lead record in mV; NaN where delineation fails (never raises)."""
    import neurokit2 as nk

    f = {name: np.nan for name in EXPERT_NAMES}
    x = np.nan_to_num(np.asarray(signal_mv, dtype=np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            lead2 = nk.ecg_clean(x[1], sampling_rate=int(fs))
            _, info = nk.ecg_peaks(lead2, sampling_rate=int(fs))
            peaks = np.asarray(info["ECG_R_Peaks"], dtype=int)
        except Exception:
            return f
        if len(peaks) < 3:
            return f
        rr = np.diff(peaks) / fs
        med = float(np.median(rr))
        drr = np.diff(rr)
        f.update(
            hr=60 / med, rr_sdnn=rr.std(), rr_rmssd=float(np.sqrt(np.mean(drr**2))) if len(drr) else np.nan,
            rr_cv=rr.std() / med, rr_max_jump=float(np.max(np.abs(drr)) / med) if len(drr) else np.nan,
            premature_fraction=float(np.mean((rr[:-1] < 0.85 * med) & (rr[1:] > 1.05 * med))) if len(rr) > 1 else np.nan,
            pnn50=float(np.mean(np.abs(drr) > 0.05)) if len(drr) else np.nan,
        )
        try:
            _, waves = nk.ecg_delineate(lead2, peaks, sampling_rate=int(fs), method="peak")
            p_on = np.asarray(waves.get("ECG_P_Onsets", []), dtype=float)
            q = np.asarray(waves.get("ECG_Q_Peaks", []), dtype=float)
            s = np.asarray(waves.get("ECG_S_Peaks", []), dtype=float)
            t_off = np.asarray(waves.get("ECG_T_Offsets", []), dtype=float)
            p_peaks = np.asarray(waves.get("ECG_P_Peaks", []), dtype=float)
            n = min(len(peaks), len(q), len(s))
            if len(p_on) and len(q):
                f["pr_ms"] = float(np.nanmedian(q[: len(p_on)] - p_on[: len(q)]) / fs * 1000)
            if n:
                f["qrs_ms"] = float(np.nanmedian(s[:n] - q[:n]) / fs * 1000)
            if len(t_off) and len(q):
                f["qt_ms"] = float(np.nanmedian(t_off[: len(q)] - q[: len(t_off)]) / fs * 1000)
            if len(p_peaks):
                f["p_present"] = float(np.mean(np.isfinite(p_peaks)))
        except Exception:
            pass
        # Per-lead beat averages around R: axis, ST (J + 60 ms vs PR baseline), T, BBB morphology.
        half_b, half_a = int(0.25 * fs), int(0.45 * fs)
        ok = [p for p in peaks if half_b <= p < x.shape[1] - half_a]
        if len(ok) >= 2:
            clean = np.stack([nk.ecg_clean(x[k], sampling_rate=int(fs)) for k in range(12)])
            avg = np.mean([clean[:, p - half_b : p + half_a] for p in ok], axis=0)  # (12, L), R at half_b
            r = half_b
            qrs = slice(r - int(0.06 * fs), r + int(0.06 * fs))
            base = slice(r - int(0.2 * fs), r - int(0.12 * fs))

            def lvl(lead: str, at: slice | int) -> float:
                k = _LEAD[lead]
                return float(np.mean(avg[k, at]) - np.mean(avg[k, base]))

            net_i = avg[0, qrs].max() + avg[0, qrs].min() - 2 * np.mean(avg[0, base])
            net_avf = avg[5, qrs].max() + avg[5, qrs].min() - 2 * np.mean(avg[5, base])
            f["qrs_axis_deg"] = float(np.degrees(np.arctan2(net_avf, net_i)))
            st_at = slice(r + int(0.1 * fs), r + int(0.12 * fs))
            t_at = slice(r + int(0.2 * fs), r + int(0.35 * fs))
            for lead in ("II", "V1", "V2", "V5", "V6"):
                f[f"st_{lead}"] = lvl(lead, st_at)
            for lead in ("II", "V1", "V5", "V6"):
                f[f"t_{lead}"] = lvl(lead, t_at)
            late = slice(r + int(0.03 * fs), r + int(0.1 * fs))
            f["v1_terminal_r"] = float(avg[6, late].max() - np.mean(avg[6, base]))  # RSR' in V1: RBBB
            f["v6_s_depth"] = float(np.mean(avg[11, base]) - avg[11, late].min())  # broad S in V6: RBBB
            f["i_s_depth"] = float(np.mean(avg[0, base]) - avg[0, late].min())
            v1 = np.abs(avg[6] - np.mean(avg[6, base]))
            above = np.where(v1[r - int(0.1 * fs) : r + int(0.1 * fs)] > 0.2 * v1.max())[0]
            f["qrs_width_v1_ms"] = float((above[-1] - above[0]) / fs * 1000) if len(above) else np.nan
            beats = np.array([clean[1, p - int(0.125 * fs) : p + int(0.125 * fs)] for p in ok])
            tmpl = np.median(beats, axis=0)
            f["beat_corr_min"] = float(np.min([np.corrcoef(b, tmpl)[0, 1] for b in beats]))
    return {k: (float(v) if np.isfinite(v) else np.nan) for k, v in f.items()}
