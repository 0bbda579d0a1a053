"""ECG augmentations on a batch (torch), drawn from a seeded generator so that runs are reproducible.

Each is a nuisance that leaves the diagnosis unchanged, which the model should learn to ignore:
electrode gain (amplitude scaling per lead), sensor noise, respiration-driven baseline wander, where
the window starts (time shift), a small heart-rate-like time stretch (+-8 %: PR and QRS durations
change by a few ms, well inside the margins of I-AVB > 200 ms and BBB > 120 ms), and a lost
electrode (lead dropout: one lead set to zero, the value a standardised flat lead has).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

STRETCH = 0.08  # largest relative time stretch
LEAD_DROPOUT = 0.1  # probability that one random lead of a window is zeroed


def _stretch(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Resample [leads, T] by ``factor`` (linear) and crop or wrap back to T samples."""
    t = x.shape[-1]
    n = max(2, int(round(t * factor)))
    y = F.interpolate(x.unsqueeze(0), size=n, mode="linear", align_corners=False).squeeze(0)
    if n >= t:
        return y[..., :t]
    return torch.cat([y, y[..., : t - n]], dim=-1)


def augment_batch(x: torch.Tensor, gen: torch.Generator, fs: float, strength: float = 1.0) -> torch.Tensor:
    """x: [batch, leads, samples] standardised signal -> augmented copy (same shape).

    ``strength`` scales every nuisance below (gain spread, noise, wander, shift, stretch, dropout
    probability) for the hyperparameter search; 1.0 gives exactly the values described (the random
    draws do not depend on it, so the stream of a seeded run is the same at any strength)."""
    b, leads, t = x.shape
    dev = x.device
    s = float(strength)
    scale = (1 - 0.2 * s) + (0.4 * s) * torch.rand(b, leads, 1, generator=gen)  # +-20 % gain, per lead
    noise = (0.03 * s) * torch.randn(x.shape, generator=gen)  # ~3 % of a standardised lead's spread
    # Baseline wander: a 0.1-0.5 Hz sinusoid (breathing) of up to 0.3 standard deviations.
    freq = 0.1 + 0.4 * torch.rand(b, 1, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(b, 1, 1, generator=gen)
    amp = (0.3 * s) * torch.rand(b, 1, 1, generator=gen)
    tt = torch.arange(t, dtype=torch.float32).view(1, 1, t) / fs
    wander = amp * torch.sin(2 * math.pi * freq * tt + phase)
    out = x * scale.to(dev) + noise.to(dev) + wander.to(dev)
    # Circular time shift of up to 1 s: the beat grid moves against the window edges.
    shifts = torch.randint(-int(fs * s), int(fs * s) + 1, (b,), generator=gen)
    factors = 1.0 + (STRETCH * s) * (2 * torch.rand(b, generator=gen) - 1)
    drop = torch.rand(b, generator=gen) < LEAD_DROPOUT * s
    drop_lead = torch.randint(0, leads, (b,), generator=gen)
    rows = []
    for i in range(b):
        row = _stretch(torch.roll(out[i], int(shifts[i]), dims=-1), float(factors[i]))
        if drop[i]:
            row = row.clone()
            row[int(drop_lead[i])] = 0.0
        rows.append(row)
    return torch.stack(rows)
