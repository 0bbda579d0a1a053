"""Personalisation (``--personalize-epochs N``): each client fine-tunes the final global model on its own
training records for N epochs, with the ClientApp's own training loop, and both models are scored on
that client's own records, so the per-site gain (or loss) of fine-tuning is measured where it matters.

Scored on: with ``--partition site``, the held-out test records of that client's sites; with IID or
Dirichlet clients (which own no test records), the client's validation records, which the fine-tuning
does not train on but the federated run used for its pooled model selection. F1 uses the global
model's thresholds for both models; AUROC needs none and is the steadier figure on few positives.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord
from tqdm import tqdm

from federated.checkpoint import load_checkpoint
from federated.config import TrainConfig
from federated.data import Experiment, eval_loader
from federated.engine import predict_records, resolve_device
from federated.flower_apps import NodeData, load_arrays, to_arrays, train_local
from federated.metrics import multilabel_metrics
from federated.plan import ClientPlan

log = logging.getLogger("federated")


def _score(model, cfg: TrainConfig, exp: Experiment, idx: list[int], thresholds: list[float]) -> dict:
    probs, _ = predict_records(model, eval_loader(exp, idx, cfg), len(idx), resolve_device(cfg.device))
    m = multilabel_metrics(exp.targets[idx], probs, list(exp.labels), thresholds)
    clean = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)  # noqa: E731
    return {"macro_f1": clean(m["macro"]["f1"]), "macro_auroc": clean(m["macro"]["auroc"]), "records": len(idx)}


def personalize(cfg: TrainConfig, exp: Experiment, out: Path, plans: list[ClientPlan]) -> dict:
    """Per client: the global model's and the fine-tuned model's metrics on that client's records."""
    from federated.simulation import site_clients

    best = load_checkpoint(out / "best.pt")
    model = best.build_model()
    global_arrays = to_arrays(model)
    sites = site_clients(cfg, exp)[0] if cfg.partition == "site" else {}
    config = ConfigRecord({
        "model": best.model_name, "model-kwargs": json.dumps(best.model_kwargs), "seed": cfg.seed, "server-round": 0,
        # A round number no federated round used: its own crops and batch order.
        "round-offset": 10_000, "device": cfg.device, "threads": 1, "lr": cfg.lr, "weight-decay": cfg.weight_decay,
        "batch-size": cfg.batch_size, "local-epochs": cfg.personalize_epochs, "pos-weight-cap": cfg.pos_weight_cap,
        "augment": cfg.augment,
    })
    results: dict = {"epochs": cfg.personalize_epochs, "scored_on": "site test records" if sites else "client validation records", "clients": {}}
    for pid, plan in enumerate(tqdm(plans, desc="personalise", leave=False)):
        idx = [i for i in exp.split["test"] if exp.entries[i].site in sites[plan.name]] if sites else list(plan.val)
        if not idx or not plan.train:
            results["clients"][plan.name] = {"skipped": "no records of its own to score on" if not idx else "no training records"}
            continue
        node = NodeData(plan.name, pid, plan.train, plan.val, [], exp.cache, exp.targets)
        tuned, _ = train_local(node, config, global_arrays)
        load_arrays(model, global_arrays)
        before = _score(model, cfg, exp, idx, best.thresholds)
        load_arrays(model, tuned)
        after = _score(model, cfg, exp, idx, best.thresholds)
        results["clients"][plan.name] = {"global": before, "personalized": after}
        log.info(
            "personalised %s (%d records): macro AUROC %s -> %s", plan.name, len(idx),
            _fmt(before["macro_auroc"]), _fmt(after["macro_auroc"]),
        )
    vals = [(c["global"]["macro_auroc"], c["personalized"]["macro_auroc"]) for c in results["clients"].values() if "global" in c]
    vals = [v for v in vals if None not in v]
    if vals:
        results["mean_macro_auroc"] = {"global": float(np.mean([a for a, _ in vals])), "personalized": float(np.mean([b for _, b in vals]))}
    return results


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
