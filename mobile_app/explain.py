"""Why the model says so: occlusion attribution per lead and per time segment, cheap enough for a phone.

No Kivy, no torch: the same ONNX network the app runs (int8 for the shipped model), through
:class:`mobile_app.inference.Classifier`. For each explained finding (by default the positive ones):

* per lead: the network's windows with that lead set to 0 (its mean after the per-lead z-score, i.e.
  a flat lead); one batched run per lead (12 runs);
* per time segment: every lead set to 0 over ``occlusion_s`` (150 ms) centred on each segment of
  ``segment_s`` seconds (50 ms steps, fine enough to tell a QRS complex from the baseline around it),
  one run per segment and window (200 runs for a 10 s record; an int8 run is about 0.3-0.5 ms here,
  so about 0.1 s in all).

The score of a lead is how much the reported probability of the finding falls when it is hidden:
``p(record) - p(record with the lead hidden)``, where ``p`` is what the app shows (the network's max
over windows, fused with the feature model's probability as the pipeline says, then calibrated). The
score of a time segment is the same fall for the window that holds it, taken alone (``p(window) -
p(window with the segment hidden)``): the record's max over windows would hide every segment of a
long record, where another window scores as high. Only
the network's input is occluded: the feature model's probability is held at its value on the whole
record (recomputing the 46 record features for each of 200 occlusions would cost about a second), so
the attribution explains the network's share of the fused probability. Negative scores (hiding a part
raised the probability) are kept in the arrays and left out of the shading.

Time scores are placed on the record's own time axis (seconds from its start); where the evenly spaced
windows overlap, a segment's score is the largest over the windows that cover it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cpsc2018.preprocess import EVAL_MAX_WINDOWS, SignalTooShort, preprocess, window_starts, windows
from cpsc2018.records import LEADS
from mobile_app.inference import Classifier, ClassifyError, fuse

DEFAULT_SEGMENT_S = 0.05
# Each time score hides 150 ms centred on its 50 ms segment: one QRS complex (80-120 ms, wider in a
# bundle branch block) disappears whole. Hiding 50 ms alone left some confident int8 windows unchanged
# (their sigmoid output saturates at the top quantization step), with no time attribution at all.
DEFAULT_OCCLUSION_S = 0.15
BATCH = 64  # windows per ONNX run and per occlusion batch: bounds memory (64 x 12 x 2,500 float32 = 7.7 MB)
RESTS_ON_SHARE = 0.25  # a finding rests on a lead holding at least this share of its lead attribution


@dataclass
class Explanation:
    """Per explained finding: lead scores ``(12,)`` and time scores ``(n_segments,)``."""

    labels: list[str]  # the findings explained
    probabilities: dict[str, float]  # the reported probability of each (what the scores are a drop of)
    lead_scores: dict[str, np.ndarray]
    time_scores: dict[str, np.ndarray]
    segment_s: float
    duration_s: float
    runs: int  # network runs (windows) spent
    leads: tuple[str, ...] = LEADS
    notes: list[str] = field(default_factory=list)

    def segment_times(self) -> np.ndarray:
        """Start time (s) of each time segment."""
        n = len(next(iter(self.time_scores.values()))) if self.time_scores else 0
        return np.arange(n) * self.segment_s

    def lead_share(self, label: str) -> np.ndarray:
        """Positive lead scores of ``label`` normalised to sum 1 (zeros if none is positive)."""
        s = np.clip(self.lead_scores[label], 0.0, None)
        return s / s.sum() if s.sum() > 0 else s

    def time_share(self, label: str) -> np.ndarray:
        s = np.clip(self.time_scores[label], 0.0, None)
        return s / s.sum() if s.sum() > 0 else s

    def rests_on(self, label: str, flagged: tuple[str, ...] | list[str]) -> list[str]:
        """The flagged leads this finding rests on: its top lead, or a lead with at least
        :data:`RESTS_ON_SHARE` of its positive lead attribution."""
        share = self.lead_share(label)
        if share.sum() == 0:
            return []
        top = int(np.argmax(share))
        return [lead for k, lead in enumerate(self.leads) if lead in flagged and (k == top or share[k] >= RESTS_ON_SHARE)]

    def to_json(self) -> dict:
        return {
            "labels": self.labels, "probabilities": self.probabilities, "segment_s": self.segment_s,
            "duration_s": self.duration_s, "runs": self.runs, "leads": list(self.leads), "notes": self.notes,
            "lead_scores": {k: [round(float(v), 6) for v in a] for k, a in self.lead_scores.items()},
            "time_scores": {k: [round(float(v), 6) for v in a] for k, a in self.time_scores.items()},
        }


def _run(clf: Classifier, w: np.ndarray) -> np.ndarray:
    return np.vstack([clf.window_probabilities(w[i : i + BATCH]) for i in range(0, len(w), BATCH)])


def explain(
    clf: Classifier, signal: np.ndarray, fs: float, labels: list[str] | None = None, *,
    segment_s: float = DEFAULT_SEGMENT_S, occlusion_s: float = DEFAULT_OCCLUSION_S,
) -> Explanation:
    """Occlusion attribution of a record ``(12, T)`` in mV at ``fs`` (module docstring). ``labels``:
    the findings to explain (default: the positive ones; none positive gives an empty explanation)."""
    if not segment_s > 0:
        raise ValueError(f"segment_s must be positive, got {segment_s}")
    pred = clf.predict(signal, fs)
    names = list(clf.meta.labels)
    if labels is None:
        labels = [n for n, pos in zip(names, pred.positive) if pos]
    unknown = [n for n in labels if n not in names]
    if unknown:
        raise ClassifyError(f"cannot explain {unknown}: the model's labels are {names}")
    duration = signal.shape[1] / fs
    if not labels:
        return Explanation([], {}, {}, {}, segment_s, duration, 0)
    idx = [names.index(n) for n in labels]
    try:
        x = preprocess(signal, fs, clf.pre)  # as Classifier.model_windows, keeping the length for the time axis
    except SignalTooShort as exc:
        raise ClassifyError(str(exc)) from None
    w = windows(x, clf.pre, max_windows=EVAL_MAX_WINDOWS)
    n_win, n_leads, n_samp = w.shape
    fs_m = clf.pre.fs
    x_len = x.shape[1]
    starts = window_starts(x_len, n_samp, EVAL_MAX_WINDOWS)
    base = _run(clf, w)  # (n_win, C)
    p_feat = pred.features
    weight = pred.network_weight

    def reported(p_net_record: np.ndarray) -> np.ndarray:
        """What the app reports for network record probabilities ``(..., C)``."""
        p = p_net_record if p_feat is None or weight is None else fuse(p_net_record, np.broadcast_to(p_feat, p_net_record.shape), weight)
        return clf.finalize(p)

    p0 = reported(base.max(axis=0))
    # Leads: every window with lead k flat, at once.
    occ = np.repeat(w[None], n_leads, axis=0)  # (leads, win, leads, samples)
    for k in range(n_leads):
        occ[k, :, k, :] = 0.0
    lead_p = _run(clf, occ.reshape(-1, n_leads, n_samp)).reshape(n_leads, n_win, -1).max(axis=1)  # (leads, C)
    lead_drop = p0[None, :] - reported(lead_p)
    # Time: around segment j of window i, every lead hidden.
    seg = max(1, int(round(segment_s * fs_m)))
    n_seg = -(-n_samp // seg)
    n_bins = max(1, -(-x_len // seg))

    def time_scores(width_s: float) -> np.ndarray:
        half = max(seg, int(round(width_s * fs_m))) // 2
        pt = np.empty((n_win, n_seg, len(names)))
        for i in range(n_win):  # built BATCH windows at a time: a 60 s record's 1,200 copies would take 144 MB
            for j0 in range(0, n_seg, BATCH):
                js = range(j0, min(n_seg, j0 + BATCH))
                occ_t = np.repeat(w[i][None], len(js), axis=0)  # (batch, leads, samples)
                for b, j in enumerate(js):
                    c = j * seg + seg // 2  # the occlusion is centred on segment j
                    occ_t[b, :, max(0, c - half) : c + half] = 0.0
                pt[i, j0 : j0 + len(js)] = clf.window_probabilities(occ_t)
        out = np.full((n_bins, len(names)), -np.inf)
        for i in range(n_win):
            # Each window against its own probability: with the record's max over windows, hiding a segment
            # of one window changes nothing while another window scores as high, and a long record's
            # attribution would vanish; per window it says what in that window drives the finding.
            drop = reported(base[i])[None, :] - reported(pt[i])  # (seg, C)
            first = int(round(starts[i] / seg))
            for j in range(n_seg):
                b = first + j
                if b < n_bins and j * seg < max(1, x_len - starts[i]):  # padded tail of a short record: no time
                    out[b] = np.maximum(out[b], drop[j])
        out[~np.isfinite(out)] = 0.0
        return out

    notes: list[str] = []
    time_drop = time_scores(occlusion_s)
    runs = n_win * (1 + n_leads + n_seg)
    # A window whose int8 output sits on its top quantization step does not move when 150 ms are hidden:
    # widen the occlusion (0.3 s, 0.6 s) for the findings left without any time score.
    for wider in (2 * occlusion_s, 4 * occlusion_s):
        empty = [k for k in idx if not (time_drop[:, k] > 0).any()]
        if not empty:
            break
        again = time_scores(wider)
        runs += n_win * n_seg
        for k in empty:
            time_drop[:, k] = again[:, k]
        notes.append(f"{', '.join(names[k] for k in empty)}: no change when hiding {occlusion_s:g} s; time scores with {wider:g} s hidden")
    if p_feat is not None:
        notes.append("the feature model's probability is held at its whole-record value: the scores explain the network's share")
    return Explanation(
        labels=list(labels), probabilities={n: float(p0[k]) for n, k in zip(labels, idx)},
        lead_scores={n: lead_drop[:, k].astype(np.float64) for n, k in zip(labels, idx)},
        time_scores={n: time_drop[:, k].astype(np.float64) for n, k in zip(labels, idx)},
        segment_s=seg / fs_m, duration_s=duration, runs=runs, notes=notes,
    )


def qrs_concentration(exp: Explanation, label: str, r_peaks_s: np.ndarray, half_width_s: float = 0.06) -> tuple[float, float]:
    """(share of ``label``'s positive time attribution in segments whose centre lies within
    ``half_width_s`` of an R peak, share of the segments that lie there): the first well above the
    second means the attribution concentrates in the QRS complexes."""
    share = exp.time_share(label)
    centres = exp.segment_times() + exp.segment_s / 2
    if len(r_peaks_s) == 0 or len(centres) == 0:
        return 0.0, 0.0
    near = np.min(np.abs(centres[:, None] - np.asarray(r_peaks_s)[None, :]), axis=1) <= half_width_s
    return float(share[near].sum()), float(near.mean())


def beat_spread(exp: Explanation, label: str, r_peaks_s: np.ndarray) -> tuple[int, int]:
    """(beats holding half of ``label``'s positive time attribution, beats in the record): each segment's
    mass goes to its nearest beat; a finding read from one beat needs 1, a rhythm finding many."""
    share = exp.time_share(label)
    peaks = np.asarray(r_peaks_s)
    if len(peaks) == 0 or share.sum() == 0:
        return 0, len(peaks)
    centres = exp.segment_times() + exp.segment_s / 2
    nearest = np.argmin(np.abs(centres[:, None] - peaks[None, :]), axis=1)
    per_beat = np.bincount(nearest, weights=share, minlength=len(peaks))
    cum = np.cumsum(np.sort(per_beat)[::-1])
    return int(np.searchsorted(cum, 0.5) + 1), len(peaks)
