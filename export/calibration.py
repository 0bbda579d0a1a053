"""Per-class probability calibration: fitted at export, stored in the ONNX metadata, applied by the app.

A probability the app shows should mean what it says: of the records shown "70 %", about 70 % carry
the finding. The fused pipeline's probabilities are not calibrated by construction (a max over
windows, an average of two models, class weighting in training), so a per-class monotone map is
fitted on held-out records and stored in the network file's metadata key ``calibration``
(:class:`Calibration`, JSON). The app (``mobile_app.inference``) applies it to what it reports.

Methods (per class, on the logit ``z = log(p / (1 - p))`` of the uncalibrated probability):

* ``platt``: ``sigmoid(a z + b)`` (Platt, "Probabilistic outputs for support vector machines", 1999),
  fitted by maximum likelihood on Platt's smoothed targets ``(n+ + 1) / (n+ + 2)`` and
  ``1 / (n- + 2)``, which keep a class with ten positives from being fitted to 0/1;
* ``temperature``: ``sigmoid(z / T)`` (Guo et al., ICML 2017), Platt with ``b = 0``;
* ``isotonic``: a non-decreasing step function (Zadrozny and Elkan, KDD 2002), stored as breakpoints
  and applied by linear interpolation (scikit-learn's ``IsotonicRegression`` fits it at export);
* ``identity``: no change (a class with no positive or no negative record, or a fit whose slope came
  out non-positive, which would invert the ranking).

``method="auto"`` (the export's default): isotonic where there is enough data, at least
:data:`ISOTONIC_MIN_RECORDS` records and :data:`ISOTONIC_MIN_POSITIVES` positives (Niculescu-Mizil and
Caruana, ICML 2005: isotonic overfits below about a thousand calibration records and Platt scaling is
better there), else Platt. On the ~300-400 validation records of the shipped model and of each
cross-validation fold no class qualifies, so every class is Platt-scaled there.

Decisions do not change: every map is monotone, the app keeps deciding on the uncalibrated
probability against the tuned threshold, and shows the threshold mapped through the same function.

Calibrated on the VALIDATION records of the checkpoint (issue 20: "calibrate per class on the
validation part"; DECISIONS.md's older "calibrate on the training split" meant the int8 quantization's
calibration records and would be optimistic here, the training records being fitted by the models).

``python -m export.calibration --cv RUNS/cv_recipe --out benchmarks/results`` writes the
cross-validated ECE table and reliability diagrams (``calibration.md``, ``calibration.png``): per fold,
fitted on the fold's validation part, scored on its test part, from each fold's
``pipeline/scores.npz`` (the app's own probabilities).

numpy at import (the app imports :class:`Calibration`); scipy, scikit-learn and matplotlib only inside
the fitting and plotting functions (the export machine).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.metadata import MetadataError, json_object

CALIBRATION_KEY = "calibration"  # metadata key of the network file; its value is Calibration JSON
CALIBRATION_VERSION = 1
METHODS: tuple[str, ...] = ("identity", "platt", "temperature", "isotonic")
ISOTONIC_MIN_RECORDS = 1000  # Niculescu-Mizil and Caruana (2005): below ~1000 Platt wins
ISOTONIC_MIN_POSITIVES = 100  # and a step function needs positives spread over its range
ECE_BINS = 10  # equal-width bins (Naeini et al., AAAI 2015; Guo et al. 2017)
_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps] before the logit


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


@dataclass(frozen=True)
class ClassCalibration:
    """One class's map from uncalibrated to calibrated probability."""

    method: str = "identity"
    a: float = 1.0  # platt / temperature: slope on the logit (1 / T for temperature)
    b: float = 0.0  # platt: intercept
    x: tuple[float, ...] = ()  # isotonic: breakpoints (uncalibrated probabilities, increasing)
    y: tuple[float, ...] = ()  # isotonic: calibrated values at the breakpoints (non-decreasing)
    note: str = ""

    def apply(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        if self.method == "identity":
            return p.copy()
        if self.method in ("platt", "temperature"):
            return _sigmoid(self.a * _logit(p) + self.b)
        if self.method == "isotonic":
            return np.interp(p, self.x, self.y)
        raise ValueError(f"unknown calibration method {self.method!r}; known: {METHODS}")

    def to_dict(self) -> dict:
        d: dict = {"method": self.method}
        if self.method in ("platt", "temperature"):
            d.update(a=float(self.a), b=float(self.b))
        if self.method == "isotonic":
            d.update(x=[float(v) for v in self.x], y=[float(v) for v in self.y])
        if self.note:
            d["note"] = self.note
        return d


@dataclass(frozen=True)
class Calibration:
    """Per-class maps, in the order of ``labels`` (the model's), and where they were fitted."""

    labels: list[str]
    classes: list[ClassCalibration]
    fitted_on: str = "validation"
    records: int = 0
    positives: list[int] = field(default_factory=list)
    version: int = CALIBRATION_VERSION

    def apply(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``p`` ``(n_classes,)`` or ``(n, n_classes)``."""
        p = np.asarray(p, dtype=np.float64)
        if p.shape[-1] != len(self.classes):
            raise ValueError(f"expected {len(self.classes)} class probabilities, got shape {p.shape}")
        out = np.empty_like(p)
        for k, c in enumerate(self.classes):
            out[..., k] = c.apply(p[..., k])
        return out

    @property
    def methods(self) -> list[str]:
        return [c.method for c in self.classes]

    def to_json(self) -> str:
        return json.dumps({
            "version": self.version, "labels": list(self.labels), "fitted_on": self.fitted_on,
            "records": int(self.records), "positives": [int(v) for v in self.positives],
            "classes": [c.to_dict() for c in self.classes],
        })

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> "Calibration":
        """Parse and check the ``calibration`` value; :class:`MetadataError` says what is wrong."""
        raw = json_object(text, CALIBRATION_KEY, source)
        if "classes" not in raw or "labels" not in raw:
            raise MetadataError(f"{source}: metadata key '{CALIBRATION_KEY}' must be an object with labels and classes")
        if raw.get("version") != CALIBRATION_VERSION:
            raise MetadataError(f"{source}: calibration version {raw.get('version')!r} is not supported (this app reads {CALIBRATION_VERSION})")
        classes = []
        for i, c in enumerate(raw["classes"]):
            method = c.get("method") if isinstance(c, dict) else None
            if method not in METHODS:
                raise MetadataError(f"{source}: calibration of class {i} has method {method!r}; known: {METHODS}")
            try:
                x, y = tuple(float(v) for v in c.get("x", ())), tuple(float(v) for v in c.get("y", ()))
                cc = ClassCalibration(method, float(c.get("a", 1.0)), float(c.get("b", 0.0)), x, y, str(c.get("note", "")))
            except (TypeError, ValueError):
                raise MetadataError(f"{source}: calibration of class {i} has malformed parameters") from None
            if method == "isotonic" and (len(x) < 2 or len(x) != len(y) or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0)):
                raise MetadataError(f"{source}: isotonic calibration of class {i} needs >= 2 increasing breakpoints")
            if method in ("platt", "temperature") and not cc.a > 0:
                raise MetadataError(f"{source}: calibration slope of class {i} must be positive, got {cc.a}")
            classes.append(cc)
        labels = [str(v) for v in raw["labels"]]
        if len(labels) != len(classes):
            raise MetadataError(f"{source}: calibration has {len(classes)} classes for {len(labels)} labels")
        return cls(labels, classes, str(raw.get("fitted_on", "")), int(raw.get("records", 0)),
                   [int(v) for v in raw.get("positives", [])], int(raw["version"]))


# --- fitting (export machine) ---------------------------------------------------------------------


def _fit_logistic(z: np.ndarray, t: np.ndarray, intercept: bool) -> tuple[float, float]:
    """Maximum likelihood ``sigmoid(a z + b)`` against soft targets ``t`` (scipy L-BFGS, analytic gradient)."""
    from scipy.optimize import minimize

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = theta[0], (theta[1] if intercept else 0.0)
        s = a * z + b
        # log(1 + e^s) - t s, stably
        val = np.logaddexp(0.0, s) - t * s
        g = _sigmoid(s) - t
        grad = [float(np.sum(g * z))] + ([float(np.sum(g))] if intercept else [])
        return float(val.sum()), np.array(grad)

    theta0 = np.array([1.0, 0.0] if intercept else [1.0])
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1]) if intercept else 0.0


def fit_class(p: np.ndarray, y: np.ndarray, method: str = "auto") -> ClassCalibration:
    """One class's map fitted on probabilities ``p`` and 0/1 targets ``y`` (module docstring)."""
    p, y = np.asarray(p, dtype=np.float64).ravel(), np.asarray(y).astype(int).ravel()
    if p.shape != y.shape:
        raise ValueError(f"probabilities {p.shape} and targets {y.shape} differ in shape")
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if method == "auto":
        method = "isotonic" if len(y) >= ISOTONIC_MIN_RECORDS and n_pos >= ISOTONIC_MIN_POSITIVES else "platt"
    if method not in METHODS:
        raise ValueError(f"calibration method must be 'auto' or one of {METHODS}, got {method!r}")
    if method == "identity":
        return ClassCalibration()
    if n_pos == 0 or n_neg == 0:
        return ClassCalibration(note=f"not fitted: {n_pos} positive and {n_neg} negative records")
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return ClassCalibration("isotonic", x=tuple(iso.X_thresholds_.tolist()), y=tuple(iso.y_thresholds_.tolist()))
    # Platt's targets: a finite-sample prior that keeps the fit away from 0/1 on few positives.
    t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    a, b = _fit_logistic(_logit(p), t, intercept=(method == "platt"))
    if not a > 0:
        return ClassCalibration(note=f"{method} fit gave slope {a:.3g} <= 0 (would invert the ranking): not applied")
    return ClassCalibration(method, a, b)


def fit_calibration(
    p: np.ndarray, y: np.ndarray, labels: Sequence[str], method: str = "auto", fitted_on: str = "validation",
) -> Calibration:
    """Per-class maps fitted on ``p`` ``(n, n_classes)`` and targets ``y`` (0/1, same shape)."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y).astype(int)
    if p.ndim != 2 or p.shape != y.shape or p.shape[1] != len(labels):
        raise ValueError(f"expected probabilities and targets of shape (n, {len(labels)}), got {p.shape} and {y.shape}")
    classes = [fit_class(p[:, k], y[:, k], method) for k in range(p.shape[1])]
    return Calibration(list(labels), classes, fitted_on, len(p), [int(v) for v in y.sum(axis=0)])


# --- measuring ------------------------------------------------------------------------------------


def ece(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of one class: sum over equal-width bins of |bin| / n x |mean(y) -
    mean(p)| (Naeini et al. 2015). NaN without records."""
    p, y = np.asarray(p, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if len(p) == 0:
        return math.nan
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.sum() / len(p) * abs(y[sel].mean() - p[sel].mean())
    return float(total)


def reliability_curve(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-empty bin: mean predicted probability, observed frequency, count."""
    p, y = np.asarray(p, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    idx = np.minimum((p * bins).astype(int), bins - 1)
    keep = [b for b in range(bins) if (idx == b).any()]
    return (np.array([p[idx == b].mean() for b in keep]), np.array([y[idx == b].mean() for b in keep]),
            np.array([(idx == b).sum() for b in keep]))


def ece_table(p_before: np.ndarray, p_after: np.ndarray, y: np.ndarray, labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per class ECE before/after and the number of positives."""
    return {name: {"before": ece(p_before[:, k], y[:, k]), "after": ece(p_after[:, k], y[:, k]), "positives": int(y[:, k].sum())}
            for k, name in enumerate(labels)}


def plot_reliability(
    p_before: np.ndarray, p_after: np.ndarray, y: np.ndarray, labels: Sequence[str], path: Path | str, title: str,
) -> None:
    """Reliability diagrams, one panel per class, before and after calibration (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    cols = 3
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
    for k, name in enumerate(labels):
        ax = axes[k // cols][k % cols]
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        for p, colour, tag in ((p_before, "tab:red", "before"), (p_after, "tab:blue", "after")):
            mx, fy, cnt = reliability_curve(p[:, k], y[:, k])
            ax.plot(mx, fy, "o-", color=colour, ms=4, label=f"{tag} (ECE {ece(p[:, k], y[:, k]):.3f})")
        ax.set_title(f"{name} ({int(y[:, k].sum())} positives of {len(y)})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability")
        ax.set_ylabel("observed frequency")
        ax.legend(loc="upper left", fontsize=8)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


# --- cross-validated figures ----------------------------------------------------------------------


def cross_validate(cv_dir: Path, methods: Sequence[str] = ("platt", "temperature", "isotonic", "auto")) -> dict:
    """Per fold of ``cv_dir`` (``fold*/pipeline/scores.npz``): fit on the fold's validation part, apply
    to its test part. Returns pooled out-of-fold arrays and per-fold ECE per method."""
    folds = sorted(p for p in Path(cv_dir).glob("fold*/pipeline/scores.npz"))
    if not folds:
        raise FileNotFoundError(f"no fold*/pipeline/scores.npz under {cv_dir} (run export.pipeline per fold first)")
    labels: list[str] | None = None
    pooled: dict[str, list[np.ndarray]] = {"y": [], "before": [], **{m: [] for m in methods}}
    per_fold: list[dict] = []
    for path in folds:
        z = np.load(path)
        yv, pv = z["validation_targets"], z["validation_pipeline"]
        yt, pt = z["test_targets"], z["test_pipeline"]
        n = yv.shape[1]
        names = [str(i) for i in range(n)]
        fold = {"fold": path.parent.parent.name, "validation": len(yv), "test": len(yt),
                "validation_positives": yv.sum(axis=0).tolist(), "ece": {"before": [ece(pt[:, k], yt[:, k]) for k in range(n)]}}
        pooled["y"].append(yt)
        pooled["before"].append(pt)
        for m in methods:
            cal = fit_calibration(pv, yv, names, m)
            after = cal.apply(pt)
            pooled[m].append(after)
            fold["ece"][m] = [ece(after[:, k], yt[:, k]) for k in range(n)]
            fold.setdefault("methods", {})[m] = cal.methods
        per_fold.append(fold)
        labels = labels or names
    return {"folds": per_fold, "pooled": {k: np.vstack(v) for k, v in pooled.items()}}


def _cv_markdown(res: dict, labels: Sequence[str], methods: Sequence[str], cv_dir: Path, png: str) -> str:
    folds, pooled = res["folds"], res["pooled"]
    y = pooled["y"]

    def ms(key: str, k: int) -> str:
        v = np.array([f["ece"][key][k] for f in folds])
        return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}"

    lines = [
        "# Calibration in cross-validation", "",
        f"Source: `{cv_dir}` ({len(folds)} folds by patient; each fold's `pipeline/scores.npz`, the fused "
        "pipeline's probabilities as the app computed them). Per fold, each class's map is fitted on the fold's "
        "validation part (" + ", ".join(str(f['validation']) for f in folds) + " records) and applied to its test part; "
        f"figures are on the test parts: mean ± sd over folds, and pooled over the {len(y)} out-of-fold records.",
        f"ECE: {ECE_BINS} equal-width bins. Decisions (thresholds) are unchanged by calibration (monotone maps).", "",
        "| class | positives (pooled test) | ECE before | " + " | ".join(f"ECE {m}" for m in methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    for k, name in enumerate(labels):
        lines.append(f"| {name} | {int(y[:, k].sum())} | {ms('before', k)} | " + " | ".join(ms(m, k) for m in methods) + " |")
    lines += ["", "Pooled out-of-fold ECE:", "",
              "| class | before | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for k, name in enumerate(labels):
        lines.append(f"| {name} | {ece(pooled['before'][:, k], y[:, k]):.4f} | "
                     + " | ".join(f"{ece(pooled[m][:, k], y[:, k]):.4f}" for m in methods) + " |")
    mean_b = np.mean([ece(pooled["before"][:, k], y[:, k]) for k in range(len(labels))])
    lines += ["", f"Mean over classes, pooled: before {mean_b:.4f}, "
              + ", ".join(f"{m} {np.mean([ece(pooled[m][:, k], y[:, k]) for k in range(len(labels))]):.4f}" for m in methods), ""]
    auto_methods = sorted({m for f in folds for m in f["methods"].get("auto", [])})
    lines += [f"`auto` (what the export uses) chose: {', '.join(auto_methods)} (isotonic needs >= {ISOTONIC_MIN_RECORDS} "
              f"records and >= {ISOTONIC_MIN_POSITIVES} positives; the folds' validation parts have "
              f"{min(f['validation'] for f in folds)}-{max(f['validation'] for f in folds)} records).",
              "", f"Reliability diagrams (pooled out-of-fold, before vs `auto`): `{png}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from cpsc2018.labels import SIX

    p = argparse.ArgumentParser(prog="python -m export.calibration", description="Cross-validated ECE before/after calibration per class.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cv", type=Path, required=True, help="cross-validation run folder (fold*/pipeline/scores.npz)")
    p.add_argument("--labels", default=",".join(SIX), help="class names in the scores' column order")
    p.add_argument("--out", type=Path, required=True, help="folder for calibration.md and calibration.png")
    args = p.parse_args(argv)
    labels = [s for s in args.labels.split(",") if s]
    methods = ("platt", "temperature", "isotonic", "auto")
    try:
        res = cross_validate(args.cv, methods)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if res["pooled"]["y"].shape[1] != len(labels):
        print(f"error: {len(labels)} labels for {res['pooled']['y'].shape[1]} columns in {args.cv}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    png = "calibration.png"
    plot_reliability(res["pooled"]["before"], res["pooled"]["auto"], res["pooled"]["y"], labels, args.out / png,
                     f"Fused pipeline, {len(res['folds'])}-fold CV, pooled test parts: before vs after calibration (fitted on each fold's validation part)")
    text = _cv_markdown(res, labels, methods, args.cv, png)
    tmp = args.out / ".calibration.md.tmp"
    tmp.write_text(text)
    tmp.replace(args.out / "calibration.md")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
