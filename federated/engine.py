"""The one training loop (``train_one_epoch``) and evaluation (``predict_records``, ``evaluate``).

No Flower import here: central, local and federated training all call these functions; the Flower
ClientApp only adapts messages to them (STYLE.md 8).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cpsc2018.leadsets import LeadSampler
from federated.augment import augment_batch
from federated.metrics import multilabel_metrics


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pos_weight(targets: np.ndarray, cap: float) -> torch.Tensor:
    """neg/pos per class, capped, 1 where a class has no positive (nothing to up-weight)."""
    pos = targets.sum(axis=0)
    neg = len(targets) - pos
    w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return torch.tensor(np.clip(w, 1.0, cap), dtype=torch.float32)


def _forward(model: nn.Module, batch: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    x = batch[0].to(device, non_blocking=True)
    if getattr(model, "num_features", 0):
        return model(x, batch[1].to(device, non_blocking=True))
    return model(x)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    amp: bool = False,
    augment_gen: torch.Generator | None = None,
    fs: float = 250.0,
    augment_strength: float = 1.0,
    proximal_mu: float = 0.0,
    global_params: list[torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "train",
    ema: "torch.optim.swa_utils.AveragedModel | None" = None,
    lead_sampler: "LeadSampler | None" = None,
) -> float:
    """One pass over ``loader``; returns the mean loss. ``proximal_mu`` > 0 adds FedProx's term
    mu/2 * ||w - w_global||^2 (Li et al., MLSys 2020) against ``global_params``."""
    model.train()
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    total, count = 0.0, 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        y = batch[-1].to(device, non_blocking=True)
        if augment_gen is not None:
            batch = [augment_batch(batch[0], augment_gen, fs, augment_strength), *batch[1:]]
        if lead_sampler is not None:  # --lead-masking: each window loses the leads its drawn set lacks
            masks = torch.from_numpy(lead_sampler.masks(len(batch[0])))
            batch = [batch[0] * masks[:, :, None], *batch[1:]]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext():
            logits = _forward(model, batch, device)
            loss = loss_fn(logits.float(), y)
        if proximal_mu > 0 and global_params is not None:
            prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params))
            loss = loss + 0.5 * proximal_mu * prox
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        if not math.isfinite(loss.item()):
            raise FloatingPointError("training loss became NaN/inf; lower --lr")
        total += loss.item() * len(y)
        count += len(y)
    return total / max(count, 1)


@torch.no_grad()
def predict_records(
    model: nn.Module, loader: DataLoader, n_records: int, device: torch.device, *, loss_fn: nn.Module | None = None,
    present: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Record-level probabilities (max over each record's windows) and the mean window loss.

    ``present`` (float ``[12]``, :func:`cpsc2018.leadsets.presence`) zeroes the absent leads first: how a
    model is scored on a reduced lead set from 12-lead records.

    Max pooling: a premature beat or a run of AF in any window makes the record positive.
    """
    model.eval()
    probs: np.ndarray | None = None
    total, count = 0.0, 0
    for batch in loader:
        idx = batch[-1].numpy()
        y = batch[-2].to(device)
        inputs = [batch[0], *batch[1:-2]]
        if present is not None:
            inputs[0] = inputs[0] * torch.as_tensor(present, dtype=inputs[0].dtype)[None, :, None]
        logits = _forward(model, inputs, device).float()
        if loss_fn is not None:
            total += loss_fn(logits, y).item() * len(y)
            count += len(y)
        p = torch.sigmoid(logits).cpu().numpy()
        if probs is None:
            probs = np.zeros((n_records, p.shape[1]), dtype=np.float64)
        np.maximum.at(probs, idx, p)
    if probs is None:
        raise ValueError("evaluation set is empty")
    return probs, (total / count if count else math.nan)


def evaluate(
    probs: np.ndarray, targets: np.ndarray, labels: Iterable[str], thresholds: Iterable[float]
) -> dict:
    return multilabel_metrics(targets, probs, list(labels), list(thresholds))
