"""What every run writes into ``--out``: checkpoints, metrics.json, history.csv, config.json, plots."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cpsc2018.util import atomic_write_text
from federated.checkpoint import Checkpoint, versions
from federated.config import TrainConfig
from federated.data import Experiment
from federated.plots import plot_confusions, plot_history, plot_roc_pr


def model_kwargs(cfg: TrainConfig, exp: Experiment, n_features: int) -> dict:
    kw = {"num_classes": len(exp.labels), "in_leads": 12, **cfg.model_kwargs}
    if n_features:
        kw["num_features"] = n_features
    if cfg.lead_masking:
        kw["lead_mask"] = True
    if cfg.leads:
        from cpsc2018.leadsets import parse_leads, presence

        kw["input_mask"] = [int(v) for v in presence(parse_leads(cfg.leads))]
    return kw


def make_checkpoint(
    model: nn.Module,
    cfg: TrainConfig,
    exp: Experiment,
    kwargs: dict,
    thresholds: list[float],
    metrics: dict,
    progress: dict,
    feature_names: list[str],
) -> Checkpoint:
    return Checkpoint(
        model_name=cfg.model,
        model_kwargs=kwargs,
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        label_set=cfg.labels,
        labels=list(exp.labels),
        preprocess=exp.pre.to_dict(),
        thresholds=[float(t) for t in thresholds],
        features=feature_names,
        metrics=metrics,
        config=cfg.to_dict(),
        split=exp.split_info,
        versions=versions(),
        progress=progress,
    )


def json_safe(obj):
    """JSON with NaN as null (NaN is not JSON); reasons for NaN live beside the numbers."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2) + "\n")


def write_history(path: Path, history: list[dict]) -> None:
    if not history:
        return
    keys = list(dict.fromkeys(k for h in history for k in h))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for h in history:
        w.writerow({k: h.get(k, "") for k in keys})
    atomic_write_text(path, buf.getvalue())


def write_final(
    out: Path,
    cfg: TrainConfig,
    history: list[dict],
    metrics: dict,
    test_probs: np.ndarray | None,
    test_targets: np.ndarray | None,
    thresholds: list[float],
    labels: list[str],
    x_key: str,
) -> None:
    write_json(out / "metrics.json", metrics)
    write_history(out / "history.csv", history)
    write_json(out / "config.json", cfg.to_dict())
    plot_history(history, out / "learning_curves.png", x_key)
    if test_probs is not None and test_targets is not None and len(test_targets):
        plot_roc_pr(test_targets, test_probs, labels, out / "roc_pr.png", "held-out test split")
        plot_confusions(test_targets, test_probs, thresholds, labels, out / "confusion.png")


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
