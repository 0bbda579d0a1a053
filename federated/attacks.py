"""Poisoned clients for the federated simulation (``--attack ... --malicious K``), so that defences can
be compared on the same runs. Never applied on a deployment node (the ClientApp passes ``attacks``
only for clients of a simulation plan), and refused outside ``--mode federated``.

- ``label-flip``: the client trains honestly on inverted labels (every one of the six multi-label
  targets y becomes 1 - y), a data-poisoning attack that sends a plausible-looking update;
- ``sign-flip``: it sends global - s * (local - global): its update reversed and scaled by s;
- ``scale``: global + s * (local - global), a boosted update (model replacement);
- ``noise``: global + Gaussian noise whose std, per tensor, is s times the std of its honest update.

s is ``--attack-scale`` (default 4). Updates are taken over every floating-point tensor the client
sends (weights and norm statistics). Which clients are malicious: K partition ids drawn with the seed
(``choose_malicious``), named in the log and in metrics.json.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord

UPDATE_ATTACKS = ("sign-flip", "scale", "noise")


def choose_malicious(n_clients: int, k: int, seed: int) -> list[int]:
    """K distinct client ids out of ``n_clients``, a pure function of the seed."""
    if not 0 <= k < n_clients:
        raise ValueError(f"--malicious {k}: must be between 0 and the number of clients - 1 ({n_clients - 1}); the partition has {n_clients} clients")
    rng = np.random.default_rng(10_000 + seed)
    return sorted(int(i) for i in rng.choice(n_clients, size=k, replace=False))


def flip_labels(targets: np.ndarray, rows: list[int]) -> np.ndarray:
    """A copy of ``targets`` with the given rows inverted (the cache's targets are shared)."""
    out = targets.copy()
    out[rows] = 1 - out[rows]
    return out


def poison_update(attack: str, global_arrays: ArrayRecord, local_arrays: ArrayRecord, scale: float, seed: int) -> ArrayRecord:
    """The update a malicious client sends instead of ``local_arrays`` (same keys and dtypes)."""
    if attack not in UPDATE_ATTACKS:
        raise ValueError(f"unknown update attack {attack!r}; expected one of {', '.join(UPDATE_ATTACKS)}")
    g = global_arrays.to_torch_state_dict()
    local = local_arrays.to_torch_state_dict()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, w in local.items():
        if not w.is_floating_point() or k not in g:
            out[k] = w
            continue
        w0 = g[k].to(torch.float32)
        delta = w.to(torch.float32) - w0
        if attack == "sign-flip":
            new = w0 - scale * delta
        elif attack == "scale":
            new = w0 + scale * delta
        else:
            std = float(delta.std()) if delta.numel() > 1 else float(delta.abs().sum())
            new = w0 + torch.randn(delta.shape, generator=gen) * (scale * std)
        out[k] = new.to(w.dtype)
    return ArrayRecord(out)


def f_assumed(cfg) -> int:
    """f the Krum family assumes: ``--num-malicious``, else the true ``--malicious`` (a defender that knows K)."""
    return int(cfg.num_malicious if cfg.num_malicious is not None else cfg.malicious)


def attack_config(cfg, client_names: list[str]) -> dict:
    """Train-config entries that make the chosen clients malicious (empty without ``--attack``)."""
    if cfg.attack == "none":
        return {}
    import json
    import logging

    bad = choose_malicious(len(client_names), cfg.malicious, cfg.seed)
    logging.getLogger("federated").info(
        "--attack %s: malicious client(s) %s (scale %g)", cfg.attack, ", ".join(client_names[i] for i in bad), cfg.attack_scale
    )
    return {"attack": cfg.attack, "malicious": json.dumps(bad), "attack-scale": float(cfg.attack_scale)}


def attack_summary(cfg, client_names: list[str]) -> dict:
    """What metrics.json records about the attack and the defence."""
    out: dict = {"robustness": {"strategy": cfg.strategy, "f_assumed": f_assumed(cfg), "clip_updates": cfg.clip_updates}}
    if cfg.attack != "none":
        bad = choose_malicious(len(client_names), cfg.malicious, cfg.seed)
        out["attack"] = {"kind": cfg.attack, "malicious": [client_names[i] for i in bad], "scale": cfg.attack_scale}
    return out
