"""Differential privacy for ECG-Lite training: DP-SGD with Opacus (``--dp local``) and Flower's
server-side DP wrappers (``--dp central``), each with the accounting that applies.

``--dp local`` (record-level DP, per client): every client (or the one central trainer) runs DP-SGD:
Poisson-sampled batches (rate q = 1 / batches per epoch), each record's gradient clipped to
``--max-grad-norm``, Gaussian noise added. The noise multiplier is calibrated once with Opacus's
``get_noise_multiplier`` (RDP accountant) so that the whole planned run, rounds x local epochs x
batches per epoch steps, spends at most ``--epsilon`` at ``--delta``. The epsilon spent so far is a
pure function of (noise multiplier, q, steps taken), so a client computes it from the round number
without keeping state (a resumed run counts the same). The accounting counts every planned round as
taken by every client (conservative when a client misses a round). A client whose next round
would pass its budget (a run extended beyond the rounds it was planned for) refuses to train: an
error reply that the server logs, and no update leaves the node.

Assumptions of the local guarantee: one window per record per epoch (``--windows-per-record 1``), so
a record is one sample; plain shuffling (Opacus replaces it with Poisson sampling); no FedProx term
(its gradient is not per-sample and would escape clipping); GroupNorm models (BatchNorm mixes the
samples of a batch, so per-sample gradients do not exist): the GroupNorm variant
(``norm_layer="group"``) is chosen automatically and checked with Opacus's ``ModuleValidator``.

``--dp central`` (client-level DP, on the server): Flower's ``DifferentialPrivacyServerSide{Fixed,
Adaptive}Clipping`` clip each client's update (local minus global weights) to ``--clipping-norm`` and
add Gaussian noise of std ``z * C / n`` to the average of the n updates. The epsilon reported is
Opacus's RDP accountant for a sampled Gaussian mechanism with noise multiplier z, sampling rate
q = (clients per round) / (clients) (1 here: every client takes part in every round) and one step per
round. This holds for a uniform average of the clipped updates: the inner strategy is made to weigh
every client equally (``weighted_by_key`` = ``dp-unit-weight``, a 1 every client sends), because a
weighted average lets a large client move the aggregate by more than C/n. It protects a whole
client's contribution against whoever sees the released global models (other clients, the public),
not against the server, which sees each update. With adaptive clipping the noise on the updates is
raised so that updates and clip counts together spend what z alone would (Andrew et al., 2021), so
the same figure applies. A non-averaging inner strategy (median, Krum...) is not covered by this
accounting: the run refuses that combination.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

    from federated.config import TrainConfig

log = logging.getLogger("federated")

# RDP orders: Opacus's defaults stop at 63, too low for few steps at a small epsilon (it warns that the
# optimum is the largest order); larger orders give a tighter, still valid, bound.
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 128, 256, 512, 1024]

# Opacus warns that its secure RNG is off (fine for research runs; noise comes from torch's seeded RNG
# so runs are reproducible) and, per batch, about a backward hook on inputs that need no gradient.
warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")

# The key every client puts in its train reply so that a DP aggregate can weigh clients equally.
UNIT_WEIGHT_KEY = "dp-unit-weight"
# Strategies whose aggregate is an average of the (clipped) updates: the central accounting holds.
AVERAGING = ("fedavg", "fedadam")


class BudgetExhausted(RuntimeError):
    """A client's next round would spend more than its (epsilon, delta) budget."""


def validate_privacy(cfg: "TrainConfig") -> None:
    """Refuse DP, attack and robustness settings that make no sense together (one-line messages)."""
    if cfg.dp == "local":
        if not cfg.epsilon > 0:
            raise ValueError(f"--epsilon must be positive (inf = clipping without noise); got {cfg.epsilon}")
        if not 0 < cfg.delta < 1:
            raise ValueError(f"--delta must be in (0, 1); got {cfg.delta}")
        if cfg.max_grad_norm <= 0:
            raise ValueError(f"--max-grad-norm must be positive; got {cfg.max_grad_norm}")
        if cfg.mode == "local":
            raise ValueError("--dp local runs in --mode central (the reference) or --mode federated (every client)")
        if cfg.windows_per_record != 1:
            raise ValueError("--dp local counts one sample per record per epoch; use --windows-per-record 1")
        if cfg.sampler != "shuffle":
            raise ValueError("--dp local uses Poisson sampling (Opacus); --sampler balanced would change the guarantee")
        if cfg.mode == "federated" and cfg.strategy == "fedprox":
            raise ValueError("--dp local with --strategy fedprox: the proximal term's gradient escapes per-sample clipping; use fedavg or fedadam")
        if cfg.features:
            raise ValueError("--dp local is not available for --features (hybrid) models")
        if cfg.folds:
            raise ValueError("--dp local with --folds is not supported; run one split")
    if cfg.dp == "central":
        if cfg.mode != "federated":
            raise ValueError("--dp central noises the federated aggregate; use it with --mode federated (or --dp local in central mode)")
        if cfg.noise_multiplier < 0 or cfg.clipping_norm <= 0:
            raise ValueError(f"--dp central needs --noise-multiplier >= 0 and --clipping-norm > 0; got {cfg.noise_multiplier} and {cfg.clipping_norm}")
        if cfg.strategy not in AVERAGING:
            raise ValueError(f"--dp central is accounted for averaging strategies ({', '.join(AVERAGING)}); got --strategy {cfg.strategy}")
        if cfg.clip_updates:
            raise ValueError("--dp central already clips every update (--clipping-norm); drop --clip-updates")
    if cfg.attack != "none" or cfg.malicious:
        if cfg.mode != "federated":
            raise ValueError(f"--attack/--malicious poison clients of the federated simulation only; this run is --mode {cfg.mode}")
        if cfg.attack == "none":
            raise ValueError("--malicious K needs --attack label-flip|sign-flip|scale|noise")
        if cfg.malicious < 1:
            raise ValueError(f"--attack {cfg.attack} needs --malicious K >= 1; got {cfg.malicious}")
    if cfg.num_malicious is not None and cfg.num_malicious < 0:
        raise ValueError(f"--num-malicious must be >= 0; got {cfg.num_malicious}")
    if cfg.clip_updates < 0:
        raise ValueError(f"--clip-updates must be 0 (off) or positive; got {cfg.clip_updates}")
    if cfg.personalize_epochs < 0:
        raise ValueError(f"--personalize-epochs must be 0 (off) or positive; got {cfg.personalize_epochs}")
    if cfg.personalize_epochs and cfg.mode != "federated":
        raise ValueError("--personalize-epochs fine-tunes the federated model per client; use it with --mode federated")


def private_model_kwargs(model: str, kwargs: dict) -> dict:
    """The constructor arguments of the model's GroupNorm variant, checked by Opacus's ModuleValidator.

    A clear error names the model and the layers Opacus cannot make private."""
    from opacus.validators import ModuleValidator

    from resnet1d import create_model

    kw = dict(kwargs)
    if kw.get("norm_layer", "group") != "group":
        raise ValueError(f"--dp local needs GroupNorm; --model-kwargs asks norm_layer={kw['norm_layer']!r}")
    try:
        net = create_model(model, **{**kw, "norm_layer": "group"})
        kw["norm_layer"] = "group"
    except ValueError:
        net = create_model(model, **kw)  # a model without a norm choice may still be private as it is
    errors = ModuleValidator.validate(net, strict=False)
    if errors:
        names = "; ".join(sorted({str(e).splitlines()[0] for e in errors}))[:300]
        raise ValueError(f"--dp local: model {model} cannot be made private by Opacus: {names}")
    return kw


@lru_cache(maxsize=256)
def noise_for_budget(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Noise multiplier that spends (epsilon, delta) in ``steps`` steps at ``sample_rate`` (RDP)."""
    from opacus.accountants.utils import get_noise_multiplier

    if math.isinf(epsilon):
        return 0.0
    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant="rdp", alphas=ALPHAS))


def spent_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` sampled Gaussian steps (Opacus's RDP accountant); inf without noise."""
    from opacus.accountants import RDPAccountant

    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    acc = RDPAccountant()
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta, alphas=ALPHAS))


@dataclass(frozen=True)
class LocalDPPlan:
    """DP-SGD of one trainer over its whole run."""

    epsilon: float
    delta: float
    max_grad_norm: float
    sample_rate: float
    steps_per_round: int  # local epochs x batches per epoch (central mode: one "round" = one epoch)
    planned_rounds: int
    noise_multiplier: float

    def spent(self, rounds_done: int) -> float:
        return spent_epsilon(self.noise_multiplier, self.sample_rate, self.steps_per_round * rounds_done, self.delta)

    def check(self, round_: int, who: str) -> float:
        """Epsilon after ``round_`` rounds; BudgetExhausted if that passes the budget."""
        eps = self.spent(round_)
        if round_ > self.planned_rounds and eps > self.epsilon:
            raise BudgetExhausted(
                f"{who}: round {round_} would spend epsilon {eps:.3f} > budget {self.epsilon:g} (delta {self.delta:g}, "
                f"planned for {self.planned_rounds} rounds); this client stops and sends no update"
            )
        return eps


def plan_local_dp(loader: DataLoader, epochs_per_round: int, rounds: int, epsilon: float, delta: float, max_grad_norm: float) -> LocalDPPlan:
    """Calibrate DP-SGD for a loader: Opacus samples each record with rate 1 / batches per epoch."""
    batches = len(loader)
    if batches < 1:
        raise ValueError("--dp local: no training batch")
    q = 1.0 / batches
    steps = epochs_per_round * batches
    z = noise_for_budget(float(epsilon), float(delta), q, steps * rounds)
    return LocalDPPlan(float(epsilon), float(delta), float(max_grad_norm), q, steps, int(rounds), z)


def make_private(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, plan: LocalDPPlan
) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
    """Opacus's PrivacyEngine around a model, optimizer and loader (noise from the torch seed).

    ``model`` keeps its parameters (the wrapper shares them), so its state_dict is what to send."""
    from opacus import PrivacyEngine

    engine = PrivacyEngine(accountant="rdp")
    return engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader,
        noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm, poisson_sampling=True,
    )


def central_dp_epsilon(noise_multiplier: float, rounds: int, delta: float, sample_rate: float = 1.0) -> float:
    """Client-level epsilon of ``rounds`` noised aggregates (see the module docstring)."""
    return spent_epsilon(noise_multiplier, sample_rate, rounds, delta)


def wrap_server_dp(strategy: "Strategy", n_clients: int, *, noise_multiplier: float, clipping_norm: float, adaptive: bool = False) -> "Strategy":
    """Flower's server-side DP wrapper (Message API) around ``strategy``; noise 0 = update clipping only."""
    from flwr.serverapp.strategy import (
        DifferentialPrivacyServerSideAdaptiveClipping,
        DifferentialPrivacyServerSideFixedClipping,
    )

    if adaptive:
        # Flower's default noise on the clip count (n/20) must exceed z/2 (Andrew et al.) and does not
        # with a few hospitals; sigma_b = z keeps the update noise at z / sqrt(1 - 1/4) = 1.15 z.
        return DifferentialPrivacyServerSideAdaptiveClipping(
            strategy, noise_multiplier, n_clients, initial_clipping_norm=clipping_norm,
            clipped_count_stddev=max(n_clients / 20, noise_multiplier),
        )
    return DifferentialPrivacyServerSideFixedClipping(strategy, noise_multiplier, clipping_norm, n_clients)


def dp_client_config(cfg: "TrainConfig", dp_rounds: int) -> dict:
    """Train-config entries of ``--dp local`` for the clients (empty otherwise)."""
    if cfg.dp != "local":
        return {}
    return {"dp": "local", "epsilon": float(cfg.epsilon), "delta": float(cfg.delta), "max-grad-norm": float(cfg.max_grad_norm), "dp-rounds": int(dp_rounds)}


def privacy_summary(cfg: "TrainConfig", history: list[dict], client_names: list[str], per_client: list[dict] | None = None) -> dict:
    """What metrics.json records about privacy: the guarantee, its assumptions, and what was spent."""
    if cfg.dp == "none":
        return {"privacy": {"dp": "none"}}
    last = history[-1] if history else {}
    if cfg.dp == "local":
        return {"privacy": {
            "dp": "local", "level": "record (DP-SGD per client)", "accountant": "Opacus RDP",
            "budget": {"epsilon": cfg.epsilon, "delta": cfg.delta}, "max_grad_norm": cfg.max_grad_norm,
            "spent_per_client": per_client[-1]["epsilon"] if per_client else {},
            "per_round": per_client or [],
        }}
    return {"privacy": {
        "dp": "central", "level": "client (server-side clipping and noise)", "accountant": "Opacus RDP, sampling rate 1, one step per round",
        "noise_multiplier": cfg.noise_multiplier, "clipping_norm": cfg.clipping_norm, "adaptive_clipping": cfg.adaptive_clipping,
        "delta": cfg.delta, "epsilon": last.get("dp_epsilon"), "clients": len(client_names),
        "per_round": [{"round": h.get("round"), "epsilon": h.get("dp_epsilon")} for h in history],
    }}
