"""Heartbeats of MIT-BIH-style records: beat windows around the annotated R peaks, RR features, AAMI labels.

Pure numpy/scipy (no torch: the app imports ``cpsc2018``). The signal is changed only by the functions
of :mod:`cpsc2018.preprocess` (the one home of preprocessing); this module chooses them, cuts beats and
computes RR intervals. Its :class:`BeatConfig` travels inside every beat checkpoint and ONNX file, as
:class:`~cpsc2018.preprocess.PreprocessConfig` does for the 12-lead task.

Per record: pick the leads by name (MLII first, then the record's other lead: V1, V2, V4 or V5; record
114 stores V5 first), band-pass + notch at 360 Hz, resample to ``fs``, standardise each lead over the
whole record (record-level normalisation only: nothing uses another patient's statistics, so a new
patient is processed exactly like a training one), then cut ``before_s`` + ``after_s`` around every
annotated beat (zero-padded at the record edges, so every annotated beat is scored). Beat labels are the
five AAMI EC57 classes of :mod:`cpsc2018.labels`; non-beat annotations are skipped.

Patients: MIT-BIH records 201 and 202 come from the same man (Moody & Mark 2001, the database
directory); :func:`patient_of` maps both to one patient so that cross-validation folds keep them
together. The inter-patient protocol (de Chazal et al., IEEE TBME 51:1196, 2004) puts 201 in DS1 and
202 in DS2 - a known leak of that protocol that cross-validation here does not repeat.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from cpsc2018.labels import AAMI, aami_class
from cpsc2018.preprocess import bandpass, normalize, notch, repair_nan, resample
from cpsc2018.records import Record, RecordError

# RR-interval features of each beat, in this order (the model's second input, ``features``). Seconds for
# the intervals; the ratios compare a beat's timing with its own patient's rhythm, which is what makes
# prematurity (S, V) visible across patients of different heart rates (de Chazal et al. 2004 use pre-,
# post-, local and average RR; Mondejar-Guerra et al. 2019 normalise them per patient).
RR_FEATURES: tuple[str, ...] = (
    "pre_rr_s",  # R(i) - R(i-1)
    "post_rr_s",  # R(i+1) - R(i)
    "local_rr_s",  # mean of the RR intervals around the beat (``local_rr_beats`` of them)
    "record_rr_s",  # mean RR of the whole record (the patient's own average)
    "pre_local_ratio",  # pre / local: < 1 for a premature beat
    "post_pre_ratio",  # post / pre: > 1 for a compensatory pause
    "pre_record_ratio",  # pre / record average
)

# Records 201 and 202 are one patient (MIT-BIH directory); every other record is its own patient.
SAME_PATIENT: dict[str, str] = {"202": "201"}

# The 22 DS1 (training) and 22 DS2 (test) records of the inter-patient protocol (de Chazal et al. 2004).
DS1: tuple[str, ...] = (
    "101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122",
    "124", "201", "203", "205", "207", "208", "209", "215", "220", "223", "230",
)
DS2: tuple[str, ...] = (
    "100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210",
    "212", "213", "214", "219", "221", "222", "228", "231", "232", "233", "234",
)


@dataclass(frozen=True)
class BeatConfig:
    """How a record becomes beat windows and RR features. Saved in beat checkpoints and ONNX metadata."""

    # 180 Hz (MIT-BIH's 360 Hz halved exactly): a QRS of 80-120 ms still spans 14-22 samples and the
    # 40 Hz band edge sits far below Nyquist (90 Hz), while the network's compute is halved.
    fs: float = 180.0
    # 0.25 s before the R peak holds the P wave (PR interval 120-200 ms), which separates S from N
    # beats; 0.45 s after holds the T wave (QT ~ 350-440 ms at normal rates), where V beats differ. The
    # window stays shorter than the RR interval at up to ~85 bpm, so mostly one beat is seen; rhythm
    # context comes from the RR features instead.
    before_s: float = 0.25
    after_s: float = 0.45
    # 1: MLII only, the lead every MIT-BIH record except the paced 102 and 104 has (and the lead of most
    # single-lead devices). 2: MLII and the record's other lead, which is V1 in most DS1 records but V2,
    # V4 or V5 in several DS2 ones (100, 103, 117, 123, ...), so a model trained on V1 meets another
    # lead at test time. In 5-fold CV on DS1 (benchmarks/results/beats.md) two leads scored macro F1
    # 0.467 +- 0.105 against MLII's 0.445 +- 0.090: within noise; MLII is the default for that reason.
    n_leads: int = 1
    primary_lead: str = "MLII"
    # As the 12-lead PreprocessConfig: 0.5 Hz removes baseline wander, 40 Hz EMG and mains; zero-phase
    # order-2 Butterworth (no shift of the R peak against the annotation). MIT-BIH is US data: 60 Hz mains.
    band_low_hz: float = 0.5
    band_high_hz: float = 40.0
    filter_order: int = 2
    notch_hz: tuple[float, ...] = (60.0,)
    # Per lead, over the whole record (record-level only; see the module docstring).
    normalize: str = "zscore"
    # Local RR: the mean of this many RR intervals centred on the beat (~10 beats, ~8 s at 75 bpm).
    local_rr_beats: int = 10
    # "diff": after the leads, one more channel per lead holding the beat minus the record's median beat
    # (the patient's dominant morphology, from the same record only). A bundle branch block patient's
    # wide normal beats then look normal against their own median, where a network trained on other
    # patients would call them ventricular. "none": the leads only.
    template: str = "diff"

    def __post_init__(self) -> None:
        if self.fs <= 0 or self.before_s < 0 or self.after_s <= 0:
            raise ValueError(f"fs and after_s must be positive and before_s >= 0, got {self.fs}, {self.before_s}, {self.after_s}")
        if self.n_leads not in (1, 2):
            raise ValueError(f"n_leads must be 1 (MLII) or 2 (MLII + the other lead), got {self.n_leads}")
        if not 0 <= self.band_low_hz < self.band_high_hz < self.fs / 2:
            raise ValueError(f"filter band must satisfy 0 <= low < high < fs/2 = {self.fs / 2}, got {self.band_low_hz}-{self.band_high_hz} Hz")
        if self.normalize not in ("zscore", "none"):
            raise ValueError(f"normalize must be 'zscore' or 'none', got {self.normalize!r}")
        if self.template not in ("diff", "none"):
            raise ValueError(f"template must be 'diff' or 'none', got {self.template!r}")
        if self.local_rr_beats < 1:
            raise ValueError(f"local_rr_beats must be at least 1, got {self.local_rr_beats}")

    @property
    def before(self) -> int:
        return int(round(self.before_s * self.fs))

    @property
    def after(self) -> int:
        return int(round(self.after_s * self.fs))

    @property
    def window_samples(self) -> int:
        return self.before + self.after

    @property
    def channels(self) -> int:
        """Input channels of a beat model: the leads, and with ``template="diff"`` their differences."""
        return self.n_leads * (2 if self.template == "diff" else 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["notch_hz"] = list(self.notch_hz)
        d["task"] = "beats"  # tells a reader of the metadata that this is not a 12-lead PreprocessConfig
        d["rr_features"] = list(RR_FEATURES)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "BeatConfig":
        data = dict(data)
        data.pop("task", None)
        rr = data.pop("rr_features", list(RR_FEATURES))
        if list(rr) != list(RR_FEATURES):
            raise ValueError(f"the model expects RR features {list(rr)}; this version computes {list(RR_FEATURES)}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown beat preprocessing parameter(s) {sorted(unknown)}; known: {sorted(known)}")
        if "notch_hz" in data:
            data["notch_hz"] = tuple(float(f) for f in data["notch_hz"])
        return cls(**data)


def is_beat_config(d: dict) -> bool:
    """Whether a preprocessing dict (checkpoint or ONNX metadata) is a :class:`BeatConfig`."""
    return d.get("task") == "beats"


@dataclass
class RecordBeats:
    """The beats of one record: windows ``(n, n_leads, W)``, RR features ``(n, len(RR_FEATURES))``,
    AAMI class index per beat (into ``cpsc2018.labels.AAMI``), R-peak sample (at the source rate)."""

    record: str  # MIT-BIH record name, e.g. "201"
    patient: str
    windows: np.ndarray
    rr: np.ndarray
    labels: np.ndarray
    samples: np.ndarray
    leads: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == k).sum()) for k, c in enumerate(AAMI)}


def record_name(path_or_id: str | Path) -> str:
    """``.../mitbih/201.hea`` or ``mitbih-201`` -> ``201``."""
    s = Path(str(path_or_id)).stem if str(path_or_id).endswith(".hea") else str(path_or_id)
    return s.removeprefix("mitbih-")


def patient_of(record: str) -> str:
    name = record_name(record)
    return SAME_PATIENT.get(name, name)


def select_leads(rec: Record, cfg: BeatConfig) -> tuple[np.ndarray, tuple[str, ...]]:
    """MLII first, then (for two leads) the record's other lead; raises naming the file if MLII is absent."""
    leads = list(rec.leads)
    if cfg.primary_lead not in leads:
        raise RecordError(rec.path, f"no {cfg.primary_lead} lead (leads {leads}); beat models read {cfg.primary_lead} first")
    order = [leads.index(cfg.primary_lead)] + [i for i in range(len(leads)) if leads[i] != cfg.primary_lead]
    if len(order) < cfg.n_leads:
        raise RecordError(rec.path, f"{len(order)} lead(s), the beat model needs {cfg.n_leads}")
    order = order[: cfg.n_leads]
    return rec.signal[order], tuple(leads[i] for i in order)


def preprocess_beats_signal(signal: np.ndarray, fs: float, cfg: BeatConfig) -> np.ndarray:
    """``(n_leads, T)`` mV at ``fs`` -> float32 ``(n_leads, T')`` at ``cfg.fs``, standardised per record."""
    x = repair_nan(signal)
    x = bandpass(x, fs, cfg.band_low_hz, cfg.band_high_hz, cfg.filter_order)
    x = notch(x, fs, cfg.notch_hz)
    x = resample(x, fs, cfg.fs)
    return np.ascontiguousarray(normalize(x, cfg.normalize), dtype=np.float32)


def rr_features(peaks_s: np.ndarray, local_beats: int = 10) -> np.ndarray:
    """RR features (:data:`RR_FEATURES`) of every beat from the R-peak times (s) of all beats of a record.

    The first beat has no previous interval and the last no next one: each takes its other neighbour's.
    A record with a single beat gets the fallback 1 s (60 bpm) so that nothing is NaN.
    """
    t = np.asarray(peaks_s, dtype=np.float64)
    n = len(t)
    if n == 0:
        return np.zeros((0, len(RR_FEATURES)), dtype=np.float32)
    if n == 1:
        rr = np.array([1.0])
    else:
        rr = np.diff(t)
    pre = np.concatenate([[rr[0]], rr]) if n > 1 else rr.copy()
    post = np.concatenate([rr, [rr[-1]]]) if n > 1 else rr.copy()
    # Centred moving mean of the intervals (edges: over what exists), via cumulative sums.
    half = max(local_beats // 2, 1)
    c = np.concatenate([[0.0], np.cumsum(pre)])
    lo = np.clip(np.arange(n) - half + 1, 0, n)
    hi = np.clip(np.arange(n) + half + 1, 0, n)
    local = (c[hi] - c[lo]) / np.maximum(hi - lo, 1)
    record = np.full(n, rr.mean())
    eps = 1e-3
    feats = np.stack([
        pre, post, local, record, pre / np.maximum(local, eps), post / np.maximum(pre, eps), pre / np.maximum(record, eps),
    ], axis=1)
    return feats.astype(np.float32)


def cut_windows(x: np.ndarray, centres: np.ndarray, before: int, after: int) -> np.ndarray:
    """``(n_leads, T)`` -> ``(n, n_leads, before + after)``: sample ``centre`` at index ``before``;
    zero (the record mean after standardisation) beyond the record's edges."""
    pad = np.pad(x, ((0, 0), (before, after)))
    idx = np.asarray(centres, dtype=np.int64)[:, None] + np.arange(before + after)[None, :]  # shifted by the pad
    return np.ascontiguousarray(pad[:, idx].transpose(1, 0, 2), dtype=np.float32)


def with_template_difference(windows: np.ndarray) -> np.ndarray:
    """``(n, leads, W)`` -> ``(n, 2 * leads, W)``: the beats, then each beat minus the record's median beat
    (the median over all of the record's beats, whatever their class: the dominant morphology)."""
    if len(windows) == 0:
        return np.concatenate([windows, windows], axis=1)
    median = np.median(windows, axis=0, keepdims=True)
    return np.ascontiguousarray(np.concatenate([windows, windows - median], axis=1), dtype=np.float32)


def record_beats(rec: Record, cfg: BeatConfig = BeatConfig()) -> RecordBeats:
    """Every annotated beat of a read record (``cpsc2018.readers.read_mitbih``)."""
    if rec.beats is None:
        raise RecordError(rec.path, "no beat annotations (.atr) beside the record")
    keep = [i for i, s in enumerate(rec.beats.symbols) if aami_class(s) is not None]
    samples = np.asarray(rec.beats.samples, dtype=np.int64)[keep]
    labels = np.array([AAMI.index(aami_class(rec.beats.symbols[i])) for i in keep], dtype=np.int64)  # type: ignore[arg-type]
    signal, leads = select_leads(rec, cfg)
    x = preprocess_beats_signal(signal, rec.fs, cfg)
    centres = np.round(samples * (cfg.fs / rec.fs)).astype(np.int64)
    windows = cut_windows(x, centres, cfg.before, cfg.after)
    if cfg.template == "diff":
        windows = with_template_difference(windows)
    rr = rr_features(samples / rec.fs, cfg.local_rr_beats)
    name = record_name(rec.record_id)
    return RecordBeats(name, patient_of(name), windows, rr, labels, samples, leads)


def load_record_beats(hea: Path | str, cfg: BeatConfig = BeatConfig()) -> RecordBeats:
    from cpsc2018.readers import read_mitbih  # wfdb: only where records are read

    return record_beats(read_mitbih(hea), cfg)


def find_beat_records(root: Path | str) -> list[Path]:
    """Headers under ``root`` (recursively) of records with ``.atr`` beat annotations and fewer than 12 leads,
    sorted by record name."""
    from cpsc2018.readers import _looks_like_mitbih

    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: data folder not found")
    found = [h for h in root.rglob("*.hea") if _looks_like_mitbih(h)]
    return sorted(found, key=lambda h: (record_name(h), str(h)))


def patient_folds(counts: dict[str, np.ndarray], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` folds of whole records, every patient's records in one fold (201 with 202), class counts spread.

    ``counts``: record -> beats per AAMI class. Greedy: patients in decreasing order of rare-class beats
    (ties broken by a seeded shuffle) go to the fold where the sum over classes of the squared fold
    shares (each class's beats in the fold / its total) grows least; so S, V and F beats spread over the
    folds as far as the patients allow (one patient holds 90 % of DS1's F beats: record 208).
    """
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    patients: dict[str, list[str]] = {}
    for r in sorted(counts):
        patients.setdefault(patient_of(r), []).append(r)
    if len(patients) < k:
        raise ValueError(f"{len(patients)} patients cannot fill {k} folds")
    per_patient = {p: np.sum([counts[r] for r in rs], axis=0).astype(np.float64) for p, rs in patients.items()}
    total = np.maximum(np.sum(list(per_patient.values()), axis=0), 1.0)
    rng = np.random.default_rng(seed)
    names = list(per_patient)
    rng.shuffle(names)
    rare = lambda p: float((per_patient[p][1:] / total[1:]).sum())  # noqa: E731  (S, V, F, Q shares)
    names.sort(key=rare, reverse=True)
    load = np.zeros((k, len(total)))
    size = np.zeros(k)
    folds: list[list[str]] = [[] for _ in range(k)]
    for p in names:
        share = per_patient[p] / total
        cost = [(float(np.sum((load[f] + share) ** 2 - load[f] ** 2)), size[f]) for f in range(k)]
        f = min(range(k), key=lambda i: cost[i])
        load[f] += share
        size[f] += per_patient[p].sum()
        folds[f] += patients[p]
    return [sorted(f) for f in folds]
