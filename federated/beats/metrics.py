"""AAMI-style beat metrics: per class sensitivity (Se), positive predictivity (+P), F1; confusion; macro F1.

ANSI/AAMI EC57 reports Se = TP / (TP + FN) and +P = TP / (TP + FP) per class from the beat-by-beat
confusion matrix (rows: reference class, columns: predicted). A class with no reference beat has no
sensitivity and no F1 (NaN, with the reason under ``undefined``), and macro F1 averages the classes that
have reference beats: MIT-BIH DS1 holds 8 Q beats, so Q is undefined on most folds.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score


def beat_metrics(y: np.ndarray, pred: np.ndarray, labels: list[str], probs: np.ndarray | None = None) -> dict:
    """``y``, ``pred``: class indices per beat; ``probs`` (optional): probabilities for one-vs-rest AUROC."""
    k = len(labels)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    per_class: dict[str, dict] = {}
    undefined: dict[str, str] = {}
    for i, name in enumerate(labels):
        tp = int(cm[i, i])
        ref = int(cm[i].sum())
        called = int(cm[:, i].sum())
        se = tp / ref if ref else math.nan
        ppv = tp / called if called else math.nan
        f1 = 2 * tp / (ref + called) if ref else math.nan
        auroc = math.nan
        if probs is not None and 0 < ref < len(y):
            auroc = float(roc_auc_score((y == i).astype(int), probs[:, i]))
        per_class[name] = {"sensitivity": se, "ppv": ppv, "f1": f1, "auroc": auroc, "support": ref, "predicted": called}
        if not ref:
            undefined[name] = "no reference beat of this class: sensitivity and F1 undefined, left out of macro F1"
        elif not called:
            undefined[name] = "never predicted: positive predictivity undefined"
    f1s = [m["f1"] for m in per_class.values() if not math.isnan(m["f1"])]
    aurocs = [m["auroc"] for m in per_class.values() if not math.isnan(m["auroc"])]
    return {
        "beats": int(len(y)),
        "macro": {"f1": float(np.mean(f1s)) if f1s else math.nan, "auroc": float(np.mean(aurocs)) if aurocs else math.nan},
        "accuracy": float((np.asarray(y) == np.asarray(pred)).mean()) if len(y) else math.nan,
        "per_class": per_class,
        "confusion": cm.tolist(),
        "undefined": undefined,
    }


def _pct(v: float) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"


def format_beat_table(m: dict) -> str:
    """Per-class Se / +P / F1 (%) with supports, macro F1 and the confusion matrix, as plain text."""
    names = list(m["per_class"])
    lines = [f"{'class':<6}{'Se %':>8}{'+P %':>8}{'F1 %':>8}{'beats':>8}{'called':>8}"]
    for n, c in m["per_class"].items():
        lines.append(f"{n:<6}{_pct(c['sensitivity']):>8}{_pct(c['ppv']):>8}{_pct(c['f1']):>8}{c['support']:>8}{c['predicted']:>8}")
    lines.append(f"macro F1 {_pct(m['macro']['f1'])} %, accuracy {_pct(m['accuracy'])} % on {m['beats']} beats")
    lines.append("confusion (rows: reference, columns: predicted) " + " ".join(names))
    for n, row in zip(names, m["confusion"]):
        lines.append(f"  {n:<4}" + "".join(f"{v:>8}" for v in row))
    for n, why in m.get("undefined", {}).items():
        lines.append(f"  {n}: {why}")
    return "\n".join(lines)
