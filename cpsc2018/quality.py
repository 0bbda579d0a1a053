"""Signal quality of a 12-lead recording before inference: per-lead flags and an overall verdict.

numpy/scipy only (the phone app runs it; so do ``mobile_app.classify`` and ``predict``). Input: what
the readers return, float32 ``(n_leads, T)`` in mV at ``fs`` Hz, leads in :data:`cpsc2018.records.LEADS`
order. :func:`assess` returns a :class:`Quality`:

* per lead (:class:`LeadQuality`) the measured indices and the flags they raise;
* record flags: ``few_beats`` (too few detectable beats in the whole recording), ``limb_reversal``
  (the classic signs of a left/right arm electrode swap), ``too_short``;
* ``bad_leads``: the leads whose signal cannot be read (missing, flat, clipped, noise). A later
  reduced-lead model (issue 21) can route a record by this tuple alone; ``warned_leads`` adds the
  milder flags (baseline wander, few beats in that lead);
* ``verdict``: ``good`` (no flag), ``usable`` (usable with warnings: some flag, but at most
  :attr:`QualityThresholds.max_bad_leads` bad leads and a detectable rhythm) or ``unusable``;
  ``reasons`` says why in words, for the screen.

Per-lead checks and where their thresholds come from (each default in :class:`QualityThresholds`
carries its reason; "chosen here" means the literature gives no number and the value was checked on
the shared records: ``benchmarks``-style figures in the issue-20 report):

* missing: more than half the samples NaN/inf (a lead the file lacks).
* flat: the 0.5-40 Hz band of the lead spans less than 0.1 mV peak to peak in at least half of its
  1 s segments (a disconnected electrode). A flat-line check is the first rule of most entries of
  the PhysioNet/CinC Challenge 2011 on the acceptability of 12-lead ECGs (Silva, Moody and Celi,
  Computing in Cardiology 38:273, 2011); 0.1 mV (one small square) is chosen here: the smallest QRS
  of a normal lead (aVL, aVR near a perpendicular axis) is still several times larger.
* clipped: more than 1 % of the samples sit on a plateau (3 or more equal samples) at the lead's own
  maximum or minimum, i.e. the amplifier or ADC hit its rail; or the lead exceeds +-10 mV, which no
  QRS reaches (chosen here).
* noise: either of two indices. (1) pSQI, the power of 5-15 Hz over 5-40 Hz (Li, Mark and Clifford,
  Physiol. Meas. 29:15, 2008; Clifford et al., Physiol. Meas. 33:1419, 2012), where a clean QRS puts
  most of its energy, below 0.35 together with a kurtosis (kSQI) below 5 (same papers: a clean ECG is
  super-Gaussian, kurtosis > 5, muscle noise near-Gaussian, 3); both must fail, because a wide QRS
  (bundle branch block) alone lowers pSQI and AF lowers kurtosis; 0.35 is below the 0.5-0.8 those
  papers give for clean beats. (2) ``hf_ratio``, the rms of the 15-40 Hz band between the QRS
  complexes over its rms within them (chosen here: P and T waves are slow, so a clean lead's high
  frequencies sit in its QRS), above 0.6. On the 2,648 shared records 0.27 % of the leads exceed 0.6;
  with white noise added to V3 of 218 clean records, 29 % (0.2 mV rms), 89 % (0.5 mV) and 98 % (1 mV)
  of them were flagged (pSQI/kSQI alone caught about half at 1 mV).
* baseline wander: basSQI, 1 - power(0-1 Hz) / power(0-40 Hz) (the same papers), below 0.3 (chosen
  here against PTB-XL's own ``baseline_drift`` annotations, see the default); the model's 0.5 Hz
  high-pass removes slow wander, so this is a warning only.
* few beats in a lead: of the beats found on all leads together (:func:`cpsc2018.features.detect_r_peaks`,
  a multi-lead Pan-Tompkins detector), the fraction this lead shows, i.e. whose QRS peak to peak is at
  least twice that of the PR segment before it (80-120 ms before the QRS centre, a local noise level),
  is below one half. This is a
  cheap stand-in for bSQI (Li, Mark and Clifford 2008: agreement of two detectors), which would run the
  detector once per lead (12 x 2 ms here, more than the whole model). A warning only.

Record checks:

* few beats: fewer than ``duration x 20 / 60`` beats (20 bpm, below any rhythm the model was trained
  on) or fewer than 3, over all leads together: no rhythm to classify, the record is unusable.
* limb-lead reversal (left/right arm): P wave and QRS negative in lead I and QRS positive in aVR, the
  classic sign of the swap (Batchvarov, Malik and Camm, Europace 9:1081, 2007; also seen in
  dextrocardia, which the message names). Measured on the median beat (QRS: +-60 ms around the beat,
  less the PR segment; P wave: 120-220 ms before it, less the 260-300 ms baseline). Requiring the P
  wave keeps extreme right axis deviation (negative QRS in I, upright sinus P) out: 38 of the 2,648
  unmodified shared records (1.4 %) are flagged; of every tenth record rewritten as an arm swap
  (I -> -I, II <-> III, aVR <-> aVL), 67 % (of 263); the rest had too small a QRS or P wave in lead I
  to tell. A warning: the leads' labels are probably wrong.

Thresholds are fixed defaults, not fitted to the classifier's data; they can be passed explicitly.

Measured on the 2,648 12-lead records of the shared folder (PTB-XL at 100 Hz): 86.0 % good, 13.7 %
usable with warnings, 0.3 % (8) unusable: six flat leads (2), a saturated limb-lead set (1), and noisy
leads in 5 records, 3 of which are paced: pacemaker spikes put high frequencies outside the QRS and
read as noise (paced rhythms are outside the six findings anyway). Cost: 5-6 ms of CPU per 10 s record
at 100 Hz, 8-10 ms at 500 Hz (one thread, Intel Xeon with AVX512-VNNI, a machine loaded by other jobs),
about as much as the whole model (6-12 ms); half of it is the beat detector, which the features run too. Against PTB-XL's own quality annotations (2,386 records) the
check agrees only on baseline drift: 50 % of the records annotated with drift are not "good", against
10 % of the others; records annotated with static noise are not flagged more often than the rest (13 %
vs 14 %; PTB-XL marks mild noise that does not hide the beats), electrode problems 3 of 8.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import signal as sps

from cpsc2018.features import detect_r_peaks
from cpsc2018.preprocess import bandpass, repair_nan, resample
from cpsc2018.records import LEADS

VERDICTS: tuple[str, ...] = ("good", "usable", "unusable")
WORK_FS = 125.0  # Hz: the rate of every measure but clipping (resolves the 0-40 Hz band)
VERDICT_TEXT = {"good": "good", "usable": "usable with warnings", "unusable": "unusable"}
# Flags that make a lead unreadable (it is in ``bad_leads``); the others are warnings.
BAD_FLAGS: tuple[str, ...] = ("missing", "flat", "clipped", "noise")
WARN_FLAGS: tuple[str, ...] = ("wander", "few_beats")
FLAG_TEXT = {
    "missing": "missing", "flat": "flat (no signal)", "clipped": "clipped or saturated", "noise": "noisy",
    "wander": "baseline wander", "few_beats": "few beats detected",
}


@dataclass(frozen=True)
class QualityThresholds:
    """Every threshold of :func:`assess` (module docstring: where each comes from)."""

    missing_fraction: float = 0.5  # more than half the samples absent: the lead is not there
    flat_mv: float = 0.1  # peak to peak of the 0.5-40 Hz band within 1 s: below one small square
    flat_fraction: float = 0.5  # at least half of the 1 s segments flat (one flat second is a pause)
    clip_fraction: float = 0.01  # samples on a plateau at the lead's extreme: 1 % is 10+ clipped peaks
    clip_run: int = 3  # equal samples in a row that make a plateau (a true R peak has one top sample)
    max_abs_mv: float = 10.0  # beyond any QRS: the amplifier's rail or an artefact
    psqi_min: float = 0.35  # 5-15 Hz / 5-40 Hz power; clean QRS 0.5-0.8 (Clifford et al. 2012)
    ksqi_min: float = 5.0  # kurtosis; clean ECG > 5, Gaussian noise 3 (Li et al. 2008)
    hf_ratio_max: float = 0.6  # 15-40 Hz rms between the QRS complexes over within them (chosen here)
    # 1 - P(0-1 Hz)/P(0-40 Hz). Below 0.3 most of the lead's power is baseline: on the 2,386 PTB-XL
    # records here it flags 47 % of the records annotated with baseline drift and 6 % of the others
    # (0.8 flagged 61 % of the others: the 0.5 Hz high-pass of the model removes that much anyway).
    bassqi_min: float = 0.3
    visible_beats_min: float = 0.5  # a lead that shows fewer than half the beats cannot be read
    visible_ratio: float = 2.0  # a beat shows when its QRS is twice the PR segment's peak to peak
    min_rate_bpm: float = 20.0  # fewer beats than this rate: no rhythm to classify
    min_beats: int = 3  # and never fewer than 3 beats (2 RR intervals)
    max_bad_leads: int = 3  # more unreadable leads than this: a third of the ECG is gone, unusable
    min_duration_s: float = 2.0  # the preprocessing's own minimum (PreprocessConfig.min_duration_s)


@dataclass
class LeadQuality:
    """One lead's measured indices and the flags they raise (names in :data:`FLAG_TEXT`)."""

    lead: str
    flags: list[str] = field(default_factory=list)
    measures: dict[str, float] = field(default_factory=dict)

    @property
    def bad(self) -> bool:
        return any(f in BAD_FLAGS for f in self.flags)


@dataclass
class Quality:
    """The quality of one recording (module docstring)."""

    verdict: str
    leads: list[LeadQuality]
    record_flags: list[str]
    reasons: list[str]
    n_beats: int
    duration_s: float

    @property
    def bad_leads(self) -> tuple[str, ...]:
        """Leads whose signal cannot be read (missing, flat, clipped, noise): a reduced-lead model drops them."""
        return tuple(q.lead for q in self.leads if q.bad)

    @property
    def dead_leads(self) -> tuple[str, ...]:
        """Leads with no signal (missing or flat): what the app leaves out, routing the record to the
        reduced lead set of the leads that remain (issue 21). Clipped and noisy leads stay in."""
        return tuple(q.lead for q in self.leads if {"missing", "flat"} & set(q.flags))

    @property
    def warned_leads(self) -> tuple[str, ...]:
        """Every lead with any flag (the bad ones and those with warnings)."""
        return tuple(q.lead for q in self.leads if q.flags)

    @property
    def usable(self) -> bool:
        return self.verdict != "unusable"

    @property
    def text(self) -> str:
        """One line for a screen: the verdict and its reasons."""
        head = f"Signal quality: {VERDICT_TEXT[self.verdict]}"
        return head + (f" ({'; '.join(self.reasons)})" if self.reasons else "")

    def to_json(self) -> dict:
        return {
            "verdict": self.verdict, "bad_leads": list(self.bad_leads), "warned_leads": list(self.warned_leads),
            "record_flags": list(self.record_flags), "reasons": list(self.reasons), "n_beats": self.n_beats,
            "duration_s": round(self.duration_s, 3),
            "leads": {q.lead: {"flags": list(q.flags), **{k: _round(v) for k, v in q.measures.items()}} for q in self.leads},
        }


def _round(v: float) -> float | None:
    return None if not np.isfinite(v) else round(float(v), 4)


def _band_power(f: np.ndarray, p: np.ndarray, lo: float, hi: float) -> float:
    sel = (f >= lo) & (f <= hi)
    return float(p[sel].sum()) if sel.any() else 0.0


def _plateau_fraction(x: np.ndarray, run: int) -> float:
    """Fraction of samples on runs of ``run``+ equal values at the lead's max or min."""
    if x.size < run:
        return 0.0
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 0:
        return 0.0
    tol = 1e-6 + 1e-3 * (hi - lo)  # ADC steps stored as float32 mV are not exactly equal
    at = (x >= hi - tol) | (x <= lo + tol)
    if not at.any():
        return 0.0
    # Lengths of runs of True.
    d = np.diff(np.concatenate(([0], at.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    lengths = ends - starts
    return float(lengths[lengths >= run].sum()) / x.size


# Beat-relative windows (seconds from the R peak, i.e. the QRS energy centre of detect_r_peaks).
QRS_WINDOW = (-0.06, 0.06)  # the QRS complex (80-120 ms wide) around its centre
PR_WINDOW = (-0.12, -0.08)  # the PR segment, the isoelectric baseline before the QRS onset
P_WINDOW = (-0.22, -0.12)  # the P wave (PR interval 120-200 ms)
PRE_P_WINDOW = (-0.30, -0.26)  # the baseline before the P wave (TP segment at normal rates)


def _beat_means(y: np.ndarray, peaks: np.ndarray, fs: float, span: tuple[float, float], reduce=np.mean) -> np.ndarray:
    """``reduce`` (mean or peak to peak) of ``y`` over ``span`` around each beat: ``(leads, beats)``."""
    a, b = int(round(span[0] * fs)), int(round(span[1] * fs))
    idx = peaks[:, None] + np.arange(a, b + 1)[None, :]
    w = y[:, idx]
    return np.ptp(w, axis=2) if reduce is np.ptp else w.mean(axis=2)


def _inner_beats(peaks: np.ndarray, fs: float, n: int) -> np.ndarray:
    """The beats whose every window (P wave to QRS end) lies inside the record."""
    lo, hi = int(round(-PRE_P_WINDOW[0] * fs)) + 1, int(round(QRS_WINDOW[1] * fs)) + 1
    return peaks[(peaks - lo >= 0) & (peaks + hi < n)]


def _median_deflections(y: np.ndarray, peaks: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """Per lead, the median beat's net QRS deflection (mean over the QRS window minus the PR baseline)
    and net P-wave deflection (mean over the P window minus the baseline before it), in mV."""
    qrs = _beat_means(y, peaks, fs, QRS_WINDOW) - _beat_means(y, peaks, fs, PR_WINDOW)
    pw = _beat_means(y, peaks, fs, P_WINDOW) - _beat_means(y, peaks, fs, PRE_P_WINDOW)
    return np.median(qrs, axis=1), np.median(pw, axis=1)


def _hf_ratio(y: np.ndarray, peaks: np.ndarray, fs: float) -> np.ndarray:
    """Per lead, rms of the 15-40 Hz band outside the QRS windows over its rms inside them. A clean
    lead has its high frequencies in the QRS only (P and T waves are slow): well below 1; broadband
    noise (muscle, a loose electrode) is as strong between the beats as within them: near 1."""
    hi = min(40.0, 0.45 * fs)
    sos = sps.butter(2, [15.0, hi], btype="bandpass", fs=fs, output="sos")
    h = sps.sosfiltfilt(sos, y, axis=1) ** 2
    a, b = int(round(QRS_WINDOW[0] * fs)), int(round(QRS_WINDOW[1] * fs))
    inside = np.zeros(y.shape[1], dtype=bool)
    for p in peaks:
        inside[max(0, p + a) : p + b + 1] = True
    edge = int(0.2 * fs)  # filter transients at both ends
    inside[:edge] = inside[-edge:] = False
    outside = ~inside
    outside[:edge] = outside[-edge:] = False
    if not inside.any() or not outside.any():
        return np.full(y.shape[0], np.nan)
    return np.sqrt(h[:, outside].mean(axis=1) / np.maximum(h[:, inside].mean(axis=1), 1e-12))


def _visible_beats(y: np.ndarray, peaks: np.ndarray, fs: float, ratio: float) -> np.ndarray:
    """Per lead, the fraction of the multi-lead beats whose QRS (peak to peak over the QRS window) is at
    least ``ratio`` times the peak to peak of the PR segment before it (a local noise level)."""
    qrs = _beat_means(y, peaks, fs, QRS_WINDOW, np.ptp)
    base = _beat_means(y, peaks, fs, PR_WINDOW, np.ptp)
    return (qrs >= ratio * np.maximum(base, 1e-3)).mean(axis=1)


def assess(signal: np.ndarray, fs: float, thresholds: QualityThresholds | None = None,
           leads: tuple[str, ...] = LEADS) -> Quality:
    """Signal quality of a record ``(n_leads, T)`` in mV at ``fs`` Hz (module docstring).

    ``leads`` names the rows (the standard 12 by default); the limb-reversal check needs I and aVR and
    is skipped without them. Raises ValueError only for a malformed input (not 2-D, wrong lead count,
    fs <= 0); a bad signal is a verdict, never an exception.
    """
    th = thresholds or QualityThresholds()
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D signal (leads, samples), got shape {x.shape}")
    if x.shape[0] != len(leads):
        raise ValueError(f"expected {len(leads)} leads ({', '.join(leads)}), got {x.shape[0]}")
    if not fs > 0:
        raise ValueError(f"sampling rate must be positive, got {fs}")
    n = x.shape[1]
    duration = n / fs
    out = [LeadQuality(lead) for lead in leads]
    if duration < th.min_duration_s:
        return Quality("unusable", out, ["too_short"], [f"recording is {duration:.1f} s long, at least {th.min_duration_s:g} s needed"], 0, duration)

    finite = np.isfinite(x)
    xr = repair_nan(x)
    xr = xr - np.median(xr, axis=1, keepdims=True)
    # Everything but the clipping check (raw samples) is measured at WORK_FS: it resolves 0-40 Hz, and
    # at 500 Hz the filters and spectra would cost more than the model itself.
    fw = min(float(fs), WORK_FS)
    xw = resample(xr, fs, fw) if fw < fs else xr
    nw = xw.shape[1]
    y = bandpass(xw, fw, 0.5, 40.0, 2)  # the band the model sees, in mV
    seg = max(1, int(fw))  # 1 s segments for the flat check
    n_seg = max(1, nw // seg)
    ptp_seg = np.ptp(y[:, : n_seg * seg].reshape(len(leads), n_seg, -1), axis=2) if nw >= seg else np.ptp(y, axis=1)[:, None]
    nper = int(min(nw, 4 * fw))  # 4 s Welch segments: 0.25 Hz bins resolve the 0-1 Hz baseline band
    f, psd = sps.welch(xw, fs=fw, nperseg=nper, axis=1)
    peaks = detect_r_peaks(x, fs)
    n_beats = int(len(peaks))
    inner = _inner_beats(np.unique(np.round(peaks * fw / fs).astype(int)), fw, nw)
    visible = _visible_beats(y, inner, fw, th.visible_ratio) if len(inner) else np.full(len(leads), np.nan)
    hf = _hf_ratio(y, inner, fw) if len(inner) >= th.min_beats and fw >= 50 else np.full(len(leads), np.nan)
    for k, q in enumerate(out):
        m = q.measures
        m["missing_fraction"] = float(1.0 - finite[k].mean())
        if m["missing_fraction"] > th.missing_fraction:
            q.flags.append("missing")
            continue
        m["flat_fraction"] = float((ptp_seg[k] < th.flat_mv).mean())
        m["ptp_mv"] = float(np.ptp(y[k]))
        if m["flat_fraction"] >= th.flat_fraction:
            q.flags.append("flat")
            continue
        m["clip_fraction"] = _plateau_fraction(x[k][finite[k]], th.clip_run)
        m["max_abs_mv"] = float(np.nanmax(np.abs(xr[k])))
        if m["clip_fraction"] > th.clip_fraction or m["max_abs_mv"] > th.max_abs_mv:
            q.flags.append("clipped")
        p540 = _band_power(f, psd[k], 5.0, 40.0)
        m["psqi"] = _band_power(f, psd[k], 5.0, 15.0) / p540 if p540 > 0 else float("nan")
        m["ksqi"] = float(np.mean(y[k] ** 4) / max(np.mean(y[k] ** 2) ** 2, 1e-30))
        m["hf_ratio"] = float(hf[k])
        if (m["psqi"] < th.psqi_min and m["ksqi"] < th.ksqi_min) or m["hf_ratio"] > th.hf_ratio_max:
            q.flags.append("noise")
        p040 = _band_power(f, psd[k], 0.0, 40.0)
        m["bassqi"] = 1.0 - _band_power(f, psd[k], 0.0, 1.0) / p040 if p040 > 0 else float("nan")
        if m["bassqi"] < th.bassqi_min:
            q.flags.append("wander")
        if len(inner) >= th.min_beats:
            m["visible_beats"] = float(visible[k])
            if m["visible_beats"] < th.visible_beats_min:
                q.flags.append("few_beats")

    record_flags: list[str] = []
    reasons: list[str] = []
    need = max(th.min_beats, int(np.floor(duration * th.min_rate_bpm / 60.0)))
    if n_beats < need:
        record_flags.append("few_beats")
        reasons.append(f"{n_beats} beat(s) detected in {duration:.1f} s (at least {need} needed)")
    if "I" in leads and "aVR" in leads and len(inner) >= th.min_beats:
        i, r = leads.index("I"), leads.index("aVR")
        qrs, pw = _median_deflections(y, inner, fw)
        for k in (i, r):
            out[k].measures.update(qrs_net_mv=float(qrs[k]), p_net_mv=float(pw[k]))
        if not (out[i].bad or out[r].bad) and qrs[i] < 0 and qrs[r] > 0 and pw[i] < 0:
            record_flags.append("limb_reversal")
            reasons.append("P and QRS negative in I, QRS positive in aVR: arm electrodes swapped? (or dextrocardia)")
    by_flag: dict[str, list[str]] = {}
    for q in out:
        for fl in q.flags:
            by_flag.setdefault(fl, []).append(q.lead)
    for fl in BAD_FLAGS + WARN_FLAGS:
        if fl in by_flag:
            reasons.append(f"{FLAG_TEXT[fl]}: {', '.join(by_flag[fl])}")
    n_bad = sum(q.bad for q in out)
    if n_bad > th.max_bad_leads or "few_beats" in record_flags:
        verdict = "unusable"
        if n_bad > th.max_bad_leads:
            reasons.insert(0, f"{n_bad} of {len(leads)} leads unreadable (at most {th.max_bad_leads} allowed)")
    elif record_flags or by_flag:
        verdict = "usable"
    else:
        verdict = "good"
    return Quality(verdict, out, record_flags, reasons, n_beats, duration)


def thresholds_json(th: QualityThresholds | None = None) -> str:
    """The thresholds as JSON (for reports)."""
    return json.dumps(asdict(th or QualityThresholds()), sort_keys=True)
