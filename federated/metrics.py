"""Scoring: per-class and macro metrics for multi-label outputs, threshold tuning, the CPSC2018 score.

Pure numpy + scikit-learn (no torch, no Flower), so the export gate and ``evaluate`` on ONNX use it too.
A metric that is undefined on the given data (e.g. AUROC of a class with no positive record) is NaN,
and :func:`undefined_reasons` says why, instead of a misleading 0.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b > 0 else math.nan


def binary_counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[int, int, int, int]:
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    tp = int(np.sum(y_true & y_pred))
    fp = int(np.sum(~y_true & y_pred))
    fn = int(np.sum(y_true & ~y_pred))
    tn = int(np.sum(~y_true & ~y_pred))
    return tp, fp, fn, tn


def class_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float]:
    """F1, sensitivity, specificity, precision at ``threshold``; AUROC and AUPRC over all thresholds."""
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=float)
    tp, fp, fn, tn = binary_counts(y_true, prob >= threshold)
    n_pos, n_neg = tp + fn, tn + fp
    out = {
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn) if n_pos > 0 else math.nan,
        "sensitivity": _safe_div(tp, n_pos),
        "specificity": _safe_div(tn, n_neg),
        "precision": _safe_div(tp, tp + fp),
        "auroc": math.nan,
        "auprc": math.nan,
        "positives": n_pos,
        "negatives": n_neg,
        "threshold": float(threshold),
    }
    if n_pos > 0 and n_neg > 0:
        out["auroc"] = float(roc_auc_score(y_true, prob))
        out["auprc"] = float(average_precision_score(y_true, prob))
    return out


def undefined_reasons(per_class: dict[str, dict[str, float]]) -> dict[str, str]:
    reasons = {}
    for name, m in per_class.items():
        if m["positives"] == 0:
            reasons[name] = "no positive record: F1, sensitivity, AUROC and AUPRC are undefined (NaN)"
        elif m["negatives"] == 0:
            reasons[name] = "no negative record: specificity, AUROC and AUPRC are undefined (NaN)"
    return reasons


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def multilabel_metrics(
    y_true: np.ndarray, prob: np.ndarray, labels: list[str] | tuple[str, ...], thresholds: list[float] | np.ndarray
) -> dict:
    """Per-class and macro metrics plus subset accuracy and Hamming loss.

    Macro values average the classes where the metric is defined (NaN classes are skipped and
    named under ``undefined``).
    """
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=float)
    if y_true.shape != prob.shape or y_true.ndim != 2 or y_true.shape[1] != len(labels):
        raise ValueError(f"expected y_true and prob of shape (n, {len(labels)}), got {y_true.shape} and {prob.shape}")
    thresholds = np.asarray(thresholds, dtype=float)
    per_class = {name: class_metrics(y_true[:, k], prob[:, k], thresholds[k]) for k, name in enumerate(labels)}
    pred = prob >= thresholds[None, :]
    macro = {
        key: _nanmean([m[key] for m in per_class.values()])
        for key in ("f1", "sensitivity", "specificity", "precision", "auroc", "auprc")
    }
    return {
        "macro": macro,
        "per_class": per_class,
        "subset_accuracy": float(np.mean(np.all(pred == y_true.astype(bool), axis=1))) if len(y_true) else math.nan,
        "hamming_loss": float(np.mean(pred != y_true.astype(bool))) if len(y_true) else math.nan,
        "records": int(len(y_true)),
        "undefined": undefined_reasons(per_class),
    }


def tune_thresholds(y_true: np.ndarray, prob: np.ndarray, default: float = 0.5) -> list[float]:
    """Per class, the probability threshold that maximises F1 on (validation) data.

    Candidates are the midpoints between sorted distinct scores; a class without positives keeps
    ``default`` (nothing to tune on). Ties go to the higher threshold (fewer false alarms).
    """
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=float)
    out = []
    for k in range(prob.shape[1]):
        y, p = y_true[:, k], prob[:, k]
        if y.sum() == 0 or y.sum() == len(y):
            out.append(float(default))
            continue
        s = np.unique(p)
        cands = np.concatenate([(s[:-1] + s[1:]) / 2, [s[0] / 2]]) if len(s) > 1 else np.array([default])
        best_t, best_f1 = default, -1.0
        for t in sorted(cands, reverse=True):
            tp, fp, fn, _ = binary_counts(y, p >= t)
            f1 = 2 * tp / max(2 * tp + fp + fn, 1)
            if f1 > best_f1 + 1e-12:
                best_t, best_f1 = float(t), f1
        out.append(best_t)
    return out


# --- CPSC2018 official score -------------------------------------------------------------------
# Liu et al., J. Med. Imaging Health Inform. 8:1368 (2018), and the challenge's score_py3.py: a 9x9
# matrix N (rows: reference, columns: predicted class). A prediction among the record's labels is
# correct and booked N[p, p]; otherwise it is booked against the record's FIRST label (REFERENCE.csv
# First_label), N[first, p]. Per class F_j = 2 N_jj / (sum_k N_jk + sum_k N_kj); F1 = mean of the nine.
# Sub-scores pool their classes' counts: Faf = F_AF; Fblock = 2 (N_33+N_44+N_55) / (N_3.+N_.3+N_4.+
# N_.4+N_5.+N_.5) over I-AVB, LBBB, RBBB; Fpc over PAC, PVC; Fst over STD, STE.
CPSC9_GROUPS = {"Faf": ("AF",), "Fblock": ("I-AVB", "LBBB", "RBBB"), "Fpc": ("PAC", "PVC"), "Fst": ("STD", "STE")}


def _ordered_references(reference, n_records: int, pred: np.ndarray, n_classes: int) -> list[tuple[int, ...]]:
    """Per record, its label indices first label first (see :func:`cpsc2018_score`)."""
    if isinstance(reference, np.ndarray) and reference.ndim == 2:
        if reference.shape != (n_records, n_classes):
            raise ValueError(f"expected a multi-hot array of shape ({n_records}, {n_classes}), got {reference.shape}")
        refs = []
        for i, (row, p) in enumerate(zip(reference.astype(bool), pred)):
            idx = tuple(int(k) for k in np.flatnonzero(row))
            if len(idx) > 1 and p not in idx:
                raise ValueError(
                    f"record {i} has {len(idx)} labels and a wrong prediction: the score needs its first label; "
                    "pass each record's labels in source order (Labelled.ordered_targets), not a multi-hot array"
                )
            refs.append(idx)
        return refs
    refs = [tuple(int(k) for k in r) for r in reference]
    if len(refs) != n_records:
        raise ValueError(f"{len(refs)} references for {n_records} predictions")
    for r in refs:
        if any(not 0 <= k < n_classes for k in r):
            raise ValueError(f"label index out of range 0..{n_classes - 1}: {r}")
    return refs


def cpsc2018_score(reference, pred_class: np.ndarray, labels: list[str] | tuple[str, ...]) -> dict:
    """Official CPSC2018 score for one predicted class per record (``pred_class``: index into ``labels``).

    ``reference``: per record, the indices of its labels in the source's order, first label first
    (``Labelled.ordered_targets("cpsc9")``: REFERENCE.csv First/Second/Third_label, or the ``#Dx:``
    order of a WFDB header). A multi-hot ``(n, 9)`` array is accepted where order cannot matter
    (single-label records, or a prediction among the labels); otherwise it is a ``ValueError``.

    Records with none of the nine labels are excluded and counted in ``records_excluded``: every
    CPSC2018 record has a label, so the challenge never scored such a record, and booking it as a
    correct prediction (a false AF alarm scored as a hit) would inflate the score.

    A class with no record and no prediction has F undefined (NaN, listed under ``undefined``); the
    challenge's code divides by zero there. F1 averages the defined classes (on the full challenge
    set all nine are defined, and this equals the official mean).
    """
    pred_class = np.asarray(pred_class, dtype=int).reshape(-1)
    n = len(labels)
    if np.any((pred_class < 0) | (pred_class >= n)):
        raise ValueError(f"predicted class indices must be in 0..{n - 1}")
    refs = _ordered_references(reference, len(pred_class), pred_class, n)
    conf = np.zeros((n, n), dtype=int)  # rows: reference class booked, cols: predicted
    excluded = 0
    for ref, p in zip(refs, pred_class):
        if not ref:
            excluded += 1
            continue
        if p in ref:
            conf[p, p] += 1
        else:
            conf[ref[0], p] += 1

    def pooled(idx: list[int]) -> float:
        return _safe_div(2 * sum(conf[j, j] for j in idx), sum(conf[j, :].sum() + conf[:, j].sum() for j in idx))

    f1 = {name: pooled([j]) for j, name in enumerate(labels)}
    index = {name: j for j, name in enumerate(labels)}
    sub = {g: pooled([index[c] for c in cls if c in index]) for g, cls in CPSC9_GROUPS.items()}
    return {
        "f1_per_class": f1,
        **sub,
        "F1": _nanmean(list(f1.values())),
        "confusion": conf.tolist(),
        "records_scored": int(conf.sum()),
        "records_excluded": excluded,
        "undefined": [name for name, v in f1.items() if math.isnan(v)],
    }
