"""Plots a person would rather look at than numbers: learning curves, ROC/PR curves, confusions."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


def plot_history(history: list[dict], path: Path, x_key: str = "epoch") -> None:
    """Training/validation loss and validation macro F1 / AUROC per epoch or round."""
    if not history:
        return
    x = [h[x_key] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("train_loss", "train loss"), ("val_loss", "validation loss")):
        ys = [h.get(key, np.nan) for h in history]
        if np.isfinite(np.asarray(ys, dtype=float)).any():
            a1.plot(x, ys, marker="o", label=label)
    a1.set_xlabel(x_key)
    a1.set_ylabel("BCE loss")
    a1.legend()
    a1.grid(alpha=0.3)
    for key, label in (("val_macro_f1", "val macro F1"), ("val_macro_auroc", "val macro AUROC")):
        a2.plot(x, [h.get(key, np.nan) for h in history], marker="o", label=label)
    a2.set_xlabel(x_key)
    a2.set_ylim(0, 1)
    a2.legend()
    a2.grid(alpha=0.3)
    fig.suptitle(f"learning curves per {x_key}")
    _save(fig, path)


def plot_roc_pr(y: np.ndarray, probs: np.ndarray, labels: list[str], path: Path, title: str = "") -> None:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for k, name in enumerate(labels):
        yk = y[:, k]
        if yk.sum() == 0 or yk.sum() == len(yk):
            continue  # a curve needs positives and negatives
        fpr, tpr, _ = roc_curve(yk, probs[:, k])
        prec, rec, _ = precision_recall_curve(yk, probs[:, k])
        a1.plot(fpr, tpr, label=name)
        a2.plot(rec, prec, label=f"{name} (n+={int(yk.sum())})")
    a1.plot([0, 1], [0, 1], "k:", lw=0.8)
    a1.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    a2.set(xlabel="recall (sensitivity)", ylabel="precision", title="precision-recall")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def plot_confusions(y: np.ndarray, probs: np.ndarray, thresholds: list[float], labels: list[str], path: Path) -> None:
    n = len(labels)
    cols = min(n, 5)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for k, name in enumerate(labels):
        ax = axes[k // cols][k % cols]
        pred = probs[:, k] >= thresholds[k]
        yk = y[:, k].astype(bool)
        m = np.array([[np.sum(~yk & ~pred), np.sum(~yk & pred)], [np.sum(yk & ~pred), np.sum(yk & pred)]])
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", color="black", fontsize=11)
        ax.set_xticks([0, 1], ["pred -", "pred +"])
        ax.set_yticks([0, 1], ["true -", "true +"])
        ax.set_title(f"{name} (t={thresholds[k]:.2f})", fontsize=10)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    _save(fig, path)
