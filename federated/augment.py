"""ECG augmentations on a batch (torch), drawn from a seeded generator so that runs are reproducible.

Each is a physiologically plausible nuisance the model should ignore: electrode gain (amplitude
scaling), sensor noise, respiration-driven baseline wander, and where the window starts (time shift).
"""

from __future__ import annotations

import math

import torch


def augment_batch(x: torch.Tensor, gen: torch.Generator, fs: float) -> torch.Tensor:
    """x: [batch, leads, samples] standardised signal -> augmented copy (same shape)."""
    b, _, t = x.shape
    dev = x.device
    scale = 0.8 + 0.4 * torch.rand(b, 1, 1, generator=gen)  # +-20 % gain
    noise = 0.03 * torch.randn(x.shape, generator=gen)  # ~3 % of a standardised lead's spread
    # Baseline wander: a 0.1-0.5 Hz sinusoid (breathing) of up to 0.3 standard deviations.
    freq = 0.1 + 0.4 * torch.rand(b, 1, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(b, 1, 1, generator=gen)
    amp = 0.3 * torch.rand(b, 1, 1, generator=gen)
    tt = torch.arange(t, dtype=torch.float32).view(1, 1, t) / fs
    wander = amp * torch.sin(2 * math.pi * freq * tt + phase)
    out = x * scale.to(dev) + noise.to(dev) + wander.to(dev)
    # Circular time shift of up to 1 s: the beat grid moves against the window edges.
    shifts = torch.randint(-int(fs), int(fs) + 1, (b,), generator=gen)
    return torch.stack([torch.roll(out[i], int(shifts[i]), dims=-1) for i in range(b)])
