"""Central (and per-site local) training: the same loop on one pool of records, with resume."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from cpsc2018.leadsets import STANDARD_SETS, LeadSampler, presence
from federated import progress_hook
from federated.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from federated.config import TrainConfig
from federated.data import Experiment, eval_loader, set_epoch, train_loader
from federated.engine import evaluate, pos_weight, predict_records, resolve_device, train_one_epoch
from federated.features_hook import feature_setup
from federated.metrics import tune_thresholds
from federated.outputs import make_checkpoint, model_kwargs, rng_state, set_rng_state, write_final

log = logging.getLogger("federated")

# Model selection: validation macro AUROC. It needs no threshold (F1 at thresholds tuned on the same
# validation records is optimistic), and it is the steadiest figure on a few positives per class.
SELECT_KEY = "val_macro_auroc"


def selection_score(metrics: dict, val_loss: float) -> float:
    """Validation macro AUROC; where no class of the validation records has both positives and
    negatives (a small local site), AUROC is undefined for every epoch and the lower validation loss
    selects instead (a negative number, so the two are never compared on one run)."""
    v = metrics["macro"]["auroc"]
    if v is None or math.isnan(v):
        return -float(val_loss) if math.isfinite(val_loss) else -math.inf
    return float(v)


def check_resume_compatible(saved: dict, cfg: TrainConfig, path: Path) -> None:
    for key in (
        "model", "model_kwargs", "labels", "seed", "data", "mode", "features", "batch_size", "lr",
        "windows_per_record", "ema", "sampler", "folds",
    ):
        if saved.get(key) != cfg.to_dict().get(key):
            raise CheckpointError(
                f"{path}: cannot resume: it was trained with {key}={saved.get(key)!r}, this run asks {cfg.to_dict().get(key)!r}"
            )
    # Privacy settings: the epsilon already spent was computed with them (a run saved before they
    # existed had the defaults, i.e. no DP).
    defaults = TrainConfig().to_dict()
    for key in ("dp", "epsilon", "delta", "max_grad_norm", "noise_multiplier", "clipping_norm", "adaptive_clipping"):
        if saved.get(key, defaults[key]) != cfg.to_dict().get(key):
            raise CheckpointError(
                f"{path}: cannot resume: its privacy accounting used {key}={saved.get(key, defaults[key])!r}, this run asks {cfg.to_dict().get(key)!r}"
            )
    if cfg.dp == "local" and cfg.mode == "central" and saved.get("epochs") != cfg.epochs:
        # DP-SGD's noise was calibrated for the saved number of epochs; more would pass the budget.
        raise CheckpointError(f"{path}: cannot resume a --dp local run with --epochs {cfg.epochs}: its noise was calibrated for {saved.get('epochs')}")


def fit(
    cfg: TrainConfig,
    exp: Experiment,
    out: Path,
    train_idx: list[int],
    val_idx: list[int],
    test_idx: list[int],
    *,
    name: str = "central",
    on_epoch: Callable[[int, float], None] | None = None,
    fold: int | None = None,
) -> dict:
    """Train ``cfg.epochs`` epochs on ``train_idx``; keep the best epoch by validation; score test.

    ``on_epoch(epoch, score)`` is called after each epoch's validation (and its checkpoints) with the
    selection score; None reports to ``federated.progress_hook`` (nobody listens by default). It may
    raise to stop training (the hyperparameter search prunes trials this way)."""
    from resnet1d import create_model

    progress = sys.stderr.isatty()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    feature_fn, feature_names = feature_setup(cfg, exp.pre)
    if cfg.dp == "local":  # DP-SGD needs the GroupNorm variant (federated.privacy)
        from federated.privacy import private_model_kwargs

        cfg.model_kwargs = private_model_kwargs(cfg.model, cfg.model_kwargs)
    kwargs = model_kwargs(cfg, exp, len(feature_names))
    model = create_model(cfg.model, **kwargs).to(device)
    if cfg.init:
        init_weights(model, cfg.init, fold, name)
    # The moving average (weights and BatchNorm statistics) is what is validated, saved and shipped.
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema > 0 else None
    )
    scored = ema.module if ema is not None else model
    loaders = {
        "train": train_loader(exp, train_idx, cfg, feature_fn),
        "val": eval_loader(exp, val_idx, cfg, feature_fn),
    }
    targets_train = exp.targets[train_idx]
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight(targets_train, cfg.pos_weight_cap).to(device))
    eval_loss_fn = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(len(loaders["train"]), 1)
    trained, plain_train, dp_plan = model, loaders["train"], None
    if cfg.dp == "local":
        from federated.privacy import make_private, plan_local_dp

        # One "round" = one epoch: the noise spends (epsilon, delta) over cfg.epochs epochs.
        dp_plan = plan_local_dp(loaders["train"], 1, cfg.epochs, cfg.epsilon, cfg.delta, cfg.max_grad_norm)
        trained, optimizer, loaders["train"] = make_private(model, optimizer, loaders["train"], dp_plan)
        log.info("%s: DP-SGD, noise multiplier %.3f, clipping %g, (epsilon %g, delta %g) over %d epochs", name, dp_plan.noise_multiplier, cfg.max_grad_norm, cfg.epsilon, cfg.delta, cfg.epochs)
    log.info(
        "%s: %d training records x %d window(s) = %d optimizer steps per epoch (batch %d, %s sampling), up to %d epochs%s",
        name, len(train_idx), cfg.windows_per_record, steps, cfg.batch_size, cfg.sampler, cfg.epochs,
        f", early stop after {cfg.patience} without progress" if cfg.patience else "",
    )
    # One-cycle: warm-up then cosine decay; converges in few epochs on small data without tuning.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps)
    history: list[dict] = []
    best = {"score": -math.inf, "epoch": 0}
    start = 1
    out.mkdir(parents=True, exist_ok=True)
    last_path = out / "last.pt"
    if cfg.resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        check_resume_compatible(ckpt.config, cfg, last_path)
        p = ckpt.progress
        model.load_state_dict(p.get("raw_state_dict", ckpt.state_dict))
        if ema is not None:
            ema.load_state_dict(p["ema"])
        optimizer.load_state_dict(p["optimizer"])
        scheduler.load_state_dict(p["scheduler"])
        set_rng_state(p["rng"])
        history, best, start = p["history"], p["best"], p["epoch"] + 1
        log.info("%s: resuming after epoch %d of %d from %s", name, p["epoch"], cfg.epochs, last_path)
    elif cfg.resume:
        log.info("%s: --resume given but %s does not exist: starting from scratch", name, last_path)
    val_targets = exp.targets[val_idx]
    if cfg.patience and history and (start - 1) - best["epoch"] >= cfg.patience:
        start = cfg.epochs + 1  # a resumed run that had already stopped early: nothing left to train
    for epoch in tqdm(range(start, cfg.epochs + 1), desc=f"{name} epochs", initial=start - 1, total=cfg.epochs, disable=not progress):
        set_epoch(plain_train, cfg.seed, epoch)  # the DP loader shares its dataset (crops per epoch)
        eps = dp_plan.check(epoch, name) if dp_plan is not None else None
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch) if cfg.augment else None
        # Seeded per epoch like the crops, so a resumed run draws the same lead sets.
        lead_sampler = LeadSampler(cfg.seed * 100_003 + epoch) if cfg.lead_masking else None
        train_loss = train_one_epoch(
            trained, loaders["train"], optimizer, loss_fn, device, scheduler=scheduler, amp=cfg.amp,
            augment_gen=gen, fs=exp.pre.fs, progress=progress, desc=f"epoch {epoch}", ema=ema,
            augment_strength=cfg.augment_strength, lead_sampler=lead_sampler,
        )
        probs, val_loss = predict_records(scored, loaders["val"], len(val_idx), device, loss_fn=eval_loss_fn)
        thresholds = tune_thresholds(val_targets, probs)
        m = evaluate(probs, val_targets, exp.labels, thresholds)
        row = {
            "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
            "val_macro_f1": m["macro"]["f1"], "val_macro_auroc": m["macro"]["auroc"], "lr": scheduler.get_last_lr()[0],
        }
        if eps is not None:
            row["dp_epsilon"] = eps
        history.append(row)
        log.info("%s epoch %d: train loss %.4f, val loss %.4f, val macro F1 %.3f, AUROC %.3f", name, epoch, train_loss, val_loss, row["val_macro_f1"], row["val_macro_auroc"])
        score = selection_score(m, val_loss)
        if score > best["score"] or best["epoch"] == 0:
            best = {"score": score, "epoch": epoch}
            save_checkpoint(out / "best.pt", make_checkpoint(scored, cfg, exp, kwargs, thresholds, {"val": m}, {"epoch": epoch}, feature_names))
        state = {
            "epoch": epoch, "history": history, "best": best, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": rng_state(),
        }
        if ema is not None:  # last.pt's weights are the average; the raw weights go on training
            state["ema"] = ema.state_dict()
            state["raw_state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        save_checkpoint(last_path, make_checkpoint(scored, cfg, exp, kwargs, thresholds, {"val": m}, state, feature_names))
        (on_epoch or progress_hook.report)(epoch, score)
        if cfg.patience and epoch - best["epoch"] >= cfg.patience:
            log.info("%s: no better validation score for %d epochs: stopping after epoch %d (best %d)", name, cfg.patience, epoch, best["epoch"])
            break
    metrics = finish(cfg, exp, out, history, test_idx, feature_fn, x_key="epoch")
    if dp_plan is not None:
        from federated.outputs import write_json

        metrics["privacy"] = {
            "dp": "local", "level": "record (DP-SGD)", "accountant": "Opacus RDP", "budget": {"epsilon": cfg.epsilon, "delta": cfg.delta},
            "noise_multiplier": dp_plan.noise_multiplier, "max_grad_norm": cfg.max_grad_norm,
            "spent": history[-1].get("dp_epsilon") if history else 0.0,
        }
        write_json(out / "metrics.json", metrics)
    return metrics


def score_lead_sets(model: nn.Module, exp: Experiment, cfg: TrainConfig, sets: list[str], *, feature_fn=None,
                    thresholds_12: list[float] | None = None) -> dict[str, dict]:
    """Per standard lead set: the model on the split's validation and test records with the other leads
    zeroed; thresholds tuned on validation (``thresholds``), ``val`` and ``test`` metrics at them, and
    with ``thresholds_12`` also ``test_12_thresholds`` (the model's own 12-lead thresholds, unchanged)."""
    device = resolve_device(cfg.device)
    val_idx, test_idx = list(exp.split["val"]), list(exp.split["test"])
    out: dict[str, dict] = {}
    for name in sets:
        mask = presence(STANDARD_SETS[name])
        pv, _ = predict_records(model, eval_loader(exp, val_idx, cfg, feature_fn), len(val_idx), device, present=mask)
        thr = [float(t) for t in tune_thresholds(exp.targets[val_idx], pv)]
        row: dict = {"thresholds": thr, "val": evaluate(pv, exp.targets[val_idx], exp.labels, thr)}
        if test_idx:
            pt, _ = predict_records(model, eval_loader(exp, test_idx, cfg, feature_fn), len(test_idx), device, present=mask)
            row["test"] = evaluate(pt, exp.targets[test_idx], exp.labels, thr)
            if thresholds_12 is not None:
                row["test_12_thresholds"] = evaluate(pt, exp.targets[test_idx], exp.labels, thresholds_12)
        out[name] = row
    return out


def lead_set_thresholds(ckpt, model: nn.Module, exp: Experiment, cfg: TrainConfig, feature_fn) -> dict:
    """A model for any lead subset: per standard lead set, thresholds tuned on the validation records
    with the other leads zeroed (stored in ``ckpt.lead_thresholds``), and that set's validation and test
    macro figures (for metrics.json)."""
    out = {}
    for name, row in score_lead_sets(model, exp, cfg, list(STANDARD_SETS), feature_fn=feature_fn).items():
        ckpt.lead_thresholds[name] = row["thresholds"]
        out[name] = {part: row[part]["macro"] for part in ("val", "test") if part in row}
        log.info("lead set %s: val macro AUROC %.3f%s", name, out[name]["val"]["auroc"],
                 f", test macro F1 {out[name]['test']['f1']:.3f}, AUROC {out[name]['test']['auroc']:.3f}" if "test" in out[name] else "")
    return out


def init_weights(model: nn.Module, path_pattern: str, fold: int | None, name: str) -> None:
    """``--init``: the weights of a saved checkpoint of the same model (widened where this model adds
    lead-mask inputs); a checkpoint of another model or label set is refused naming the file."""
    from resnet1d.resnet import load_widened

    path = Path(path_pattern.replace("{fold}", str(fold if fold is not None else "")))
    ckpt = load_checkpoint(path)
    try:
        widened = load_widened(model, ckpt.state_dict)
    except ValueError as exc:
        raise CheckpointError(f"{path}: --init cannot start {name} from it: {exc}") from None
    log.info("%s: starting from the weights of %s%s", name, path, f" (zero-initialised new inputs of {', '.join(widened)})" if widened else "")


def finish(cfg: TrainConfig, exp: Experiment, out: Path, history: list[dict], test_idx: list[int], feature_fn, x_key: str) -> dict:
    """Score the best checkpoint on the held-out test split and write metrics, history and plots."""
    device = resolve_device(cfg.device)
    best_ckpt = load_checkpoint(out / "best.pt")
    model = best_ckpt.build_model().to(device)
    metrics = {"best_" + x_key: best_ckpt.progress.get(x_key), "val": best_ckpt.metrics["val"], "selected_by": SELECT_KEY}
    test_probs = test_targets = None
    if test_idx:
        test_probs, _ = predict_records(model, eval_loader(exp, test_idx, cfg, feature_fn), len(test_idx), device)
        test_targets = exp.targets[test_idx]
        metrics["test"] = evaluate(test_probs, test_targets, exp.labels, best_ckpt.thresholds)
        best_ckpt.metrics = {"val": best_ckpt.metrics["val"], "test": metrics["test"]}
        save_checkpoint(out / "best.pt", best_ckpt)
    if best_ckpt.model_kwargs.get("lead_mask"):
        metrics["lead_sets"] = lead_set_thresholds(best_ckpt, model, exp, cfg, feature_fn)
        save_checkpoint(out / "best.pt", best_ckpt)
    write_final(out, cfg, history, metrics, test_probs, test_targets, best_ckpt.thresholds, list(exp.labels), x_key)
    return metrics
