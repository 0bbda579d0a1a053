"""Beat training: central (one pool of patients), local (one model per client) and cross-validation.

Multi-class: softmax over the five AAMI classes, cross-entropy loss; the loop is the project's one loop,
``federated.engine.train_one_epoch`` (it passes the RR features to models with ``num_features``).

Class imbalance (N is ~90 % of DS1 beats) with the existing flags:

* weighting (default): cross-entropy weights n_N / n_c per class, capped at ``--pos-weight-cap`` (20);
* sampling: ``--sampler balanced`` draws beats with replacement at 1 / class count (add
  ``--pos-weight-cap 1`` to switch the weighting off, or both corrections multiply);
* none: ``--pos-weight-cap 1`` with the default ``--sampler shuffle``.

Validation and selection (central mode): the patients under ``--data`` are split into folds of whole
patients (:func:`cpsc2018.beats.patient_folds`, about ``split_fractions[1]`` of them per fold); one fold
validates (the epoch with the best validation macro F1 is kept), the others train. There is no test part:
the test set of the inter-patient protocol is DS2, another folder (``python -m federated.evaluate``).
``--folds k`` cross-validates instead: k folds of whole patients, each scored by a model trained for
``--epochs`` on the others (no inner validation, the last epoch is scored), out-of-fold beats pooled.
``--resume`` is not supported for beats (a central run on DS1 takes minutes).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cpsc2018.beat_dataset import BeatDataset
from cpsc2018.beats import RR_FEATURES, BeatConfig, patient_folds, patient_of
from cpsc2018.labels import AAMI
from federated.beats.data import BeatData, BeatDataError, beat_loader, class_weights, load_beat_data, patients
from federated.beats.metrics import beat_metrics, format_beat_table
from federated.checkpoint import Checkpoint, save_checkpoint, versions
from federated.config import TrainConfig
from federated.engine import resolve_device, train_one_epoch
from federated.outputs import write_history, write_json

log = logging.getLogger("federated")

# ``--model`` defaults to the 12-lead product model; for beats that default means the beat network.
DEFAULT_BEAT_MODEL = "beatnet"
LABEL_SET = "aami"


def beat_model_name(cfg: TrainConfig) -> str:
    return DEFAULT_BEAT_MODEL if cfg.model == "resnet1d18" else cfg.model


def beat_config(cfg: TrainConfig) -> BeatConfig:
    """The beat preprocessing of a run: defaults, with ``--model-kwargs`` keys ``in_leads`` (1 = MLII, 2 = MLII
    and the record's other lead) and ``template`` ("diff" | "none"); these two are taken out of the model's
    arguments (the model's input channels follow from them: ``BeatConfig.channels``)."""
    d = BeatConfig()
    return BeatConfig(n_leads=int(cfg.model_kwargs.get("in_leads", d.n_leads)), template=str(cfg.model_kwargs.get("template", d.template)))


def beat_model_kwargs(cfg: TrainConfig, bcfg: BeatConfig) -> dict:
    """Five classes, the config's leads, the RR head (``--model-kwargs '{"num_features": 0}'`` drops it)."""
    kw = {"num_classes": len(AAMI), "num_features": len(RR_FEATURES), **cfg.model_kwargs}
    kw.pop("template", None)  # a BeatConfig setting (beat_config), not a model argument
    kw["in_leads"] = bcfg.channels  # the leads (and their template differences), whatever --model-kwargs said
    return kw


@torch.no_grad()
def predict_beats(model: nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    """Softmax probabilities ``(n_beats, n_classes)`` in the loader's order."""
    model.eval()
    out = []
    for x, rr, _ in loader:
        x = x.to(device)
        logits = model(x, rr.to(device)) if getattr(model, "num_features", 0) else model(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(AAMI)), dtype=np.float32)


def score(model: nn.Module, ds: BeatDataset, device: torch.device) -> tuple[dict, np.ndarray]:
    probs = predict_beats(model, beat_loader(ds, 512, train=False), device)
    y = ds.labels.numpy()
    return beat_metrics(y, probs.argmax(axis=1), list(AAMI), probs), probs


def fit_beats(
    cfg: TrainConfig,
    data: BeatData,
    train_names: list[str],
    val_names: list[str] | None = None,
    *,
    name: str = "central",
    progress: bool | None = None,
) -> dict:
    """Train on the beats of ``train_names`` for ``cfg.epochs``; with ``val_names`` keep the epoch of best
    validation macro F1 (early stop after ``cfg.patience`` epochs without progress), else the last epoch.
    Returns ``model`` (eval mode), ``model_name``, ``kwargs``, ``history``, ``best_epoch``, ``val`` metrics."""
    from resnet1d import create_model

    progress = sys.stderr.isatty() if progress is None else progress
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    mname, kwargs = beat_model_name(cfg), beat_model_kwargs(cfg, data.cfg)
    model = create_model(mname, **kwargs).to(device)
    train_ds = BeatDataset(data.subset(train_names))
    loader = beat_loader(train_ds, cfg.batch_size, train=True, balanced=cfg.sampler == "balanced", seed=cfg.seed)
    counts = train_ds.class_counts(len(AAMI))
    weights = class_weights(counts, cfg.pos_weight_cap)
    loss_fn = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(len(loader), 1)
    # One-cycle, as the 12-lead central training: warm-up then cosine decay, robust without tuning.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps)
    val_ds = BeatDataset(data.subset(val_names)) if val_names else None
    log.info(
        "%s: %s on %d beats of %d records (%s), %d steps per epoch, %s sampling, class weights %s%s",
        name, mname, len(train_ds), len(train_names), dict(zip(AAMI, counts.tolist())), steps, cfg.sampler,
        "off" if weights is None else [round(float(w), 1) for w in weights],
        f"; validation on {len(val_ds)} beats of {len(val_names or [])} records" if val_ds else "",
    )
    history: list[dict] = []
    best = {"epoch": 0, "f1": -math.inf, "state": None, "val": None}
    for epoch in tqdm(range(1, cfg.epochs + 1), desc=f"{name} epochs", disable=not progress):
        loader.generator.manual_seed(cfg.seed * 100_003 + epoch)  # type: ignore[union-attr]
        t0 = time.perf_counter()
        loss = train_one_epoch(model, loader, optimizer, loss_fn, device, scheduler=scheduler, progress=progress, desc=f"epoch {epoch}")
        row: dict = {"epoch": epoch, "train_loss": loss, "seconds": time.perf_counter() - t0}
        if val_ds is not None:
            m, _ = score(model, val_ds, device)
            row["val_macro_f1"] = m["macro"]["f1"]
            f1 = m["macro"]["f1"] if not math.isnan(m["macro"]["f1"]) else -1.0
            if f1 > best["f1"]:
                best = {"epoch": epoch, "f1": f1, "state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "val": m}
        history.append(row)
        log.info("%s epoch %d: train loss %.4f%s (%.1f s)", name, epoch, loss,
                 f", val macro F1 {row['val_macro_f1']:.3f}" if "val_macro_f1" in row else "", row["seconds"])
        if val_ds is not None and cfg.patience and epoch - best["epoch"] >= cfg.patience:
            log.info("%s: no better validation macro F1 for %d epochs: stopping after epoch %d (best %d)", name, cfg.patience, epoch, best["epoch"])
            break
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    return {
        "model": model.eval(), "model_name": mname, "kwargs": kwargs, "history": history,
        "best_epoch": best["epoch"] or len(history), "val": best["val"], "train_counts": dict(zip(AAMI, counts.tolist())),
    }


def make_beat_checkpoint(cfg: TrainConfig, data: BeatData, fit: dict, split: dict, metrics: dict) -> Checkpoint:
    """The checkpoint contract of the 12-lead task with the beat facts: label set ``aami``, the
    :class:`BeatConfig` as ``preprocess``, the RR feature names as ``features`` (the second input).
    Beats are decided by the top-1 class (softmax); ``thresholds`` are not used and hold 0."""
    model = fit["model"]
    return Checkpoint(
        model_name=fit["model_name"],
        model_kwargs=fit["kwargs"],
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        label_set=LABEL_SET,
        labels=list(AAMI),
        preprocess=data.cfg.to_dict(),
        thresholds=[0.0] * len(AAMI),
        features=list(RR_FEATURES) if fit["kwargs"].get("num_features") else [],
        metrics=metrics,
        config=cfg.to_dict(),
        split={"task": "beats", "seed": cfg.seed, "data": data.root, **split},
        versions=versions(),
        progress={"epoch": fit["best_epoch"], "history": fit["history"]},
    )


def validation_split(data: BeatData, cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """Whole patients: about ``split_fractions[1]`` of them validate, the rest train (seeded)."""
    names = list(data.records)
    k = max(2, int(round(1.0 / max(cfg.split_fractions[1], 1e-6))))
    k = min(k, len(patients(names)))
    if k < 2:
        raise BeatDataError(f"{len(names)} record(s) of one patient under {data.root}: need at least 2 patients (train and validation)")
    folds = data.folds(k, cfg.seed)
    val = folds[cfg.seed % k]
    return [n for n in names if n not in val], val


def run_central(cfg: TrainConfig, data: BeatData, out: Path) -> dict:
    train, val = validation_split(data, cfg)
    fit = fit_beats(cfg, data, train, val)
    split = {"train_records": train, "val_records": val, "test_records": []}
    ckpt = make_beat_checkpoint(cfg, data, fit, split, {"val": fit["val"]})
    save_checkpoint(out / "best.pt", ckpt)
    metrics = {"mode": "central", "task": "beats", "best_epoch": fit["best_epoch"], "val": fit["val"], **split}
    write_outputs(out, cfg, fit["history"], metrics)
    log.info("validation records %s:\n%s", ", ".join(val), format_beat_table(fit["val"]))
    return metrics


def client_groups(data: BeatData, names: list[str], n_clients: int | None, seed: int) -> dict[str, list[str]]:
    """Federated/local clients: one per patient (records 201 and 202 together), or ``n_clients`` groups
    of whole patients with the rare classes spread (:func:`cpsc2018.beats.patient_folds`)."""
    counts = {n: c for n, c in data.counts().items() if n in set(names)}
    if n_clients is None:
        groups: dict[str, list[str]] = {}
        for n in sorted(names):
            groups.setdefault(f"patient-{patient_of(n)}", []).append(n)
        return groups
    n_pat = len(patients(names))
    if n_clients > n_pat:
        raise ValueError(f"--clients {n_clients} but the training records hold {n_pat} patients")
    if n_clients == 1:
        return {"group-1": sorted(names)}
    return {f"group-{i + 1}": f for i, f in enumerate(patient_folds(counts, n_clients, seed))}


def run_local(cfg: TrainConfig, data: BeatData, out: Path) -> dict:
    """One model per client on its own records only, every one scored on the same validation records."""
    train, val = validation_split(data, cfg)
    groups = client_groups(data, train, cfg.clients, cfg.seed)
    val_ds = BeatDataset(data.subset(val))
    device = resolve_device(cfg.device)
    results = {}
    for gname, names in groups.items():
        fit = fit_beats(cfg, data, names, None, name=f"local {gname}")
        m, _ = score(fit["model"], val_ds, device)
        split = {"train_records": names, "val_records": val, "test_records": []}
        save_checkpoint(out / "local" / gname / "best.pt", make_beat_checkpoint(cfg, data, fit, split, {"val": m}))
        results[gname] = {"train_records": names, "train_beats": fit["train_counts"], "val": m}
        log.info("local %s (records %s): validation macro F1 %.3f", gname, ", ".join(names), m["macro"]["f1"])
    summary = {"mode": "local", "task": "beats", "val_records": val, "clients": results}
    write_json(out / "metrics.json", summary)
    return summary


def cross_validate(cfg: TrainConfig, data: BeatData, folds: list[list[str]], train_fn=None, progress: bool | None = None) -> dict:
    """Out-of-fold beat predictions: fold i is scored by a model trained on the other folds.
    ``train_fn(cfg, data, train_names) -> nn.Module`` (default: :func:`fit_beats`, last epoch)."""
    from federated.cv import mean_sd

    device = resolve_device(cfg.device)
    probs, ys, per_fold = [], [], []
    for i, test in enumerate(folds):
        train = [n for f in folds if f is not test for n in f]
        t0 = time.perf_counter()
        if train_fn is None:
            model = fit_beats(cfg, data, train, None, name=f"fold {i + 1}/{len(folds)}", progress=progress)["model"]
        else:
            model = train_fn(cfg, data, train)
        ds = BeatDataset(data.subset(test))
        m, p = score(model, ds, device)
        m["records"] = test
        m["seconds"] = time.perf_counter() - t0
        per_fold.append(m)
        probs.append(p)
        ys.append(ds.labels.numpy())
        log.info("fold %d (records %s): macro F1 %.3f", i + 1, ", ".join(test), m["macro"]["f1"])
    y, p = np.concatenate(ys), np.concatenate(probs)
    pooled = beat_metrics(y, p.argmax(axis=1), list(AAMI), p)
    summary = {
        "folds": len(folds),
        "macro": {"f1": mean_sd([m["macro"]["f1"] for m in per_fold]), "auroc": mean_sd([m["macro"]["auroc"] for m in per_fold])},
        "per_class": {c: {"f1": mean_sd([m["per_class"][c]["f1"] for m in per_fold])} for c in AAMI},
    }
    return {"pooled": pooled, "per_fold": per_fold, "summary": summary, "folds_records": folds}


def run_cv(cfg: TrainConfig, data: BeatData, out: Path) -> dict:
    folds = data.folds(cfg.folds, cfg.seed)
    res = cross_validate(cfg, data, folds)
    metrics = {"mode": "cv", "task": "beats", **res}
    write_json(out / "metrics.json", metrics)
    write_json(out / "config.json", cfg.to_dict())
    log.info("pooled out-of-fold beats:\n%s", format_beat_table(res["pooled"]))
    return metrics


def write_outputs(out: Path, cfg: TrainConfig, history: list[dict], metrics: dict) -> None:
    write_json(out / "metrics.json", metrics)
    write_history(out / "history.csv", history)
    write_json(out / "config.json", cfg.to_dict())


def run(cfg: TrainConfig) -> dict:
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if cfg.resume:
        raise ValueError("--resume is not supported with --task beats (a run takes minutes); start again")
    if cfg.features:
        raise ValueError("--features adds the 12-lead hand features; beat models take their RR features already")
    # Privacy and attacks (issue 13-14 flags) are wired for the 12-lead task only so far: refuse rather than ignore.
    unsupported = [f"--{k.replace('_', '-')}" for k, off in (("dp", "none"), ("attack", "none"), ("malicious", 0), ("clip_updates", 0.0))
                   if getattr(cfg, k, off) != off]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)} not supported with --task beats yet")
    data = load_beat_data(cfg.data, beat_config(cfg))
    total = np.sum(list(data.counts().values()), axis=0)
    log.info("%d records (%d patients), %d beats: %s", len(data.records), len(patients(list(data.records))), int(total.sum()),
             dict(zip(AAMI, total.tolist())))
    if cfg.mode == "central" and cfg.folds:
        return run_cv(cfg, data, out)
    if cfg.mode == "central":
        return run_central(cfg, data, out)
    if cfg.mode == "local":
        return run_local(cfg, data, out)
    from federated.beats.flower import run_federated_beats

    return run_federated_beats(cfg, data, out)
