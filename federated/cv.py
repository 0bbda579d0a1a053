"""Patient-level k-fold cross-validation of central training (``--folds K``).

The split (DECISIONS): ``cpsc2018.splits.patient_folds``, K folds by patient stratified over the labels,
seed ``--seed``; inside each fold's training part a validation part selects the epoch and tunes the
thresholds. Each fold is an ordinary central run in ``OUT/fold{i}/`` (checkpoints, learning curves,
metrics), plus ``oof.npz``: the selected model's record probabilities on its validation and test parts,
which later stages (fusion with the feature model, the export gate) reuse without retraining.

The figures in ``cv_metrics.json`` / ``cv_summary.md``: per class and macro, the mean ± sd over folds of
each fold's test-part metrics at its own validation thresholds ("fold mean"), and the same metrics on
the pooled out-of-fold predictions ("pooled"). A killed run resumes: finished folds are kept and the
unfinished one continues from its ``last.pt`` (with ``--resume``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np

from cpsc2018.splits import patient_folds
from federated.config import TrainConfig
from federated.data import Experiment, eval_loader
from federated.engine import evaluate, predict_records, resolve_device
from federated.features_hook import feature_setup
from federated.metrics import multilabel_metrics
from federated.outputs import write_json
from federated.checkpoint import load_checkpoint
from cpsc2018.util import atomic_write_bytes, atomic_write_text

log = logging.getLogger("federated")

METRICS: tuple[str, ...] = ("f1", "auroc", "sensitivity", "specificity")


def fold_experiments(exp: Experiment, cfg: TrainConfig) -> list[Experiment]:
    """One Experiment per fold: same cache, the fold's split and split record (saved in checkpoints)."""
    folds = patient_folds(exp.entries, k=cfg.folds, seed=cfg.seed, label_set=cfg.labels)
    pos = {e.key: i for i, e in enumerate(exp.entries)}
    out = []
    for i, fold in enumerate(folds):
        split = {name: [pos[e.key] for e in es] for name, es in fold.items()}
        info = {
            **exp.split_info,
            "folds": cfg.folds,
            "fold": i,
            "val_ids": [e.key for e in fold["val"]],
            "test_ids": [e.key for e in fold["test"]],
        }
        out.append(dataclasses.replace(exp, split=split, split_info=info))
    return out


def save_oof(path: Path, exp: Experiment, cfg: TrainConfig) -> dict[str, np.ndarray]:
    """Validation and test probabilities of ``best.pt`` (the same scoring path as training's)."""
    ckpt = load_checkpoint(path.parent / "best.pt")
    device = resolve_device(cfg.device)
    model = ckpt.build_model().to(device)
    feature_fn, _ = feature_setup(cfg, exp.pre)
    arrays: dict[str, np.ndarray] = {"thresholds": np.asarray(ckpt.thresholds)}
    for part in ("val", "test"):
        idx = exp.split[part]
        probs, _ = predict_records(model, eval_loader(exp, idx, cfg, feature_fn), len(idx), device)
        arrays[f"{part}_probs"] = probs
        arrays[f"{part}_targets"] = exp.targets[idx]
        arrays[f"{part}_keys"] = np.array([exp.entries[i].key for i in idx])
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return arrays


def summarize(per_fold: list[dict], labels: list[str]) -> dict:
    """Mean and sd over folds of each class's and the macro metrics (NaN folds skipped, counted)."""
    out: dict = {"folds": len(per_fold), "per_class": {}, "macro": {}}
    for metric in METRICS:
        for name in labels:
            vals = [f["per_class"][name][metric] for f in per_fold]
            out["per_class"].setdefault(name, {})[metric] = mean_sd(vals)
        out["macro"][metric] = mean_sd([f["macro"][metric] for f in per_fold])
    return out


def mean_sd(vals: list[float]) -> dict:
    """Mean, sd (n - 1) and count of the defined values (None and NaN are skipped); one home for the
    "mean ± sd over folds" of the training command and the benchmarks."""
    v = np.array([x for x in vals if x is not None and not math.isnan(x)], dtype=float)
    return {
        "mean": float(v.mean()) if v.size else math.nan,
        "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan,
        "n": int(v.size),
    }


def fmt(ms: dict) -> str:
    """``mean ± sd`` with three decimals, or n/a (see :func:`mean_sd`)."""
    return "n/a" if math.isnan(ms["mean"]) else f"{ms['mean']:.3f} ± {ms['sd']:.3f}"


def summary_markdown(title: str, summary: dict, pooled: dict, labels: list[str]) -> str:
    lines = [f"# {title}", "", f"{summary['folds']}-fold patient cross-validation; test parts, mean ± sd over folds.", ""]
    lines += ["| | " + " | ".join(labels) + " | macro |", "|---" * (len(labels) + 2) + "|"]
    for metric in ("f1", "auroc"):
        row = [fmt(summary["per_class"][n][metric]) for n in labels] + [fmt(summary["macro"][metric])]
        lines.append(f"| {metric.upper() if metric == 'auroc' else 'F1'} | " + " | ".join(row) + " |")
    lines += ["", f"Pooled out-of-fold predictions ({pooled['records']} records): macro F1 "
              f"{pooled['macro']['f1']:.3f}, macro AUROC {pooled['macro']['auroc']:.3f}.", ""]
    return "\n".join(lines)


def run_cv(cfg: TrainConfig, exp: Experiment, out: Path) -> dict:
    from federated.central import fit

    labels = list(exp.labels)
    per_fold, oof = [], []
    for i, fexp in enumerate(fold_experiments(exp, cfg)):
        fdir = out / f"fold{i}"
        log.info("fold %d/%d: train %d, val %d, test %d records", i + 1, cfg.folds,
                 len(fexp.split["train"]), len(fexp.split["val"]), len(fexp.split["test"]))
        oof_path = fdir / "oof.npz"
        if not (oof_path.exists() and (fdir / "metrics.json").exists()):
            fit(cfg, fexp, fdir, fexp.split["train"], fexp.split["val"], fexp.split["test"], name=f"fold {i}", fold=i)
            save_oof(oof_path, fexp, cfg)
        else:
            log.info("fold %d: finished earlier, kept (%s)", i, oof_path)
        arrays = dict(np.load(oof_path))
        per_fold.append(evaluate(arrays["test_probs"], arrays["test_targets"], labels, arrays["thresholds"]))
        oof.append(arrays)
    summary = summarize(per_fold, labels)
    # Pooled: each record's test-part probability, judged at its own fold's validation thresholds
    # (a decision per record, then one confusion matrix); AUROC ranks the pooled probabilities.
    y = np.concatenate([a["test_targets"] for a in oof])
    p = np.concatenate([a["test_probs"] for a in oof])
    decided = np.concatenate([(a["test_probs"] >= a["thresholds"][None, :]).astype(float) for a in oof])
    pooled = multilabel_metrics(y, p, labels, [0.5] * len(labels))
    pooled_dec = multilabel_metrics(y, decided, labels, [0.5] * len(labels))
    for name in labels:
        for key in ("f1", "sensitivity", "specificity", "precision"):
            pooled["per_class"][name][key] = pooled_dec["per_class"][name][key]
    for key in ("f1", "sensitivity", "specificity", "precision"):
        pooled["macro"][key] = pooled_dec["macro"][key]
    result = {"mode": "cv", "folds": cfg.folds, "seed": cfg.seed, "fold_metrics": per_fold, "summary": summary, "pooled": pooled}
    write_json(out / "cv_metrics.json", result)
    atomic_write_text(out / "cv_summary.md", summary_markdown(f"{cfg.model} cross-validation", summary, pooled, labels))
    _plot_folds(out, cfg.folds)
    return result


def _plot_folds(out: Path, k: int) -> None:
    """Learning curves of every fold on one figure: validation macro AUROC and loss per epoch."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i in range(k):
        path = out / f"fold{i}" / "history.csv"
        if not path.exists():
            continue
        rows = list(csv.DictReader(open(path)))
        ep = [int(r["epoch"]) for r in rows]
        axes[0].plot(ep, [float(r["val_macro_auroc"] or "nan") for r in rows], label=f"fold {i}")
        axes[1].plot(ep, [float(r["train_loss"]) for r in rows], "--", color=f"C{i}")
        axes[1].plot(ep, [float(r["val_loss"]) for r in rows], color=f"C{i}", label=f"fold {i}")
    axes[0].set(xlabel="epoch", ylabel="validation macro AUROC", title="model selection")
    axes[1].set(xlabel="epoch", ylabel="loss", title="train (dashed) and validation loss")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = out / ".learning_curves_folds.png.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(out / "learning_curves_folds.png")
