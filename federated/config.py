"""The training configuration: one typed dataclass, saved inside every checkpoint and config.json."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cpsc2018.preprocess import EVAL_MAX_WINDOWS
from cpsc2018.util import default_data_dir

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
# Poisoned clients in simulation (federated/attacks.py).
ATTACKS = ("none", "label-flip", "sign-flip", "scale", "noise")


@dataclass
class TrainConfig:
    data: str = field(default_factory=lambda: str(default_data_dir()))
    out: str = "runs/latest"
    model: str = "resnet1d18"
    # Extra constructor arguments of the model as JSON, e.g. '{"widths": [16, 32, 64, 128]}'.
    model_kwargs: dict = field(default_factory=dict)
    mode: str = "central"  # central | local | federated
    labels: str = "six"  # six | cpsc9
    # "six": the 12-lead record task; "beats": AAMI heartbeat classes on MIT-BIH records (federated.beats).
    task: str = "six"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # Mixed precision only pays on a GPU; on CPU bf16 autocast slows small convolutions down.
    amp: bool = False
    resume: bool = False
    # Central / local training.
    epochs: int = 30
    # 32 fits a 2-core CPU step in well under a second for resnet1d18 and is a common ECG batch size.
    batch_size: int = 32
    # AdamW at 1e-3 with a one-cycle schedule is the usual robust start for 1D ResNets on ECG.
    lr: float = 1e-3
    weight_decay: float = 1e-4
    workers: int = 2
    augment: bool = False
    # Scales every augmentation's size (federated/augment.py; 1 = as documented there): a knob for the
    # hyperparameter search. Central and local training only, until the federated clients take it.
    augment_strength: float = 1.0
    # Training length made explicit: each epoch draws this many random windows of every training record
    # (one window per record per epoch gave only ~15 optimizer steps per epoch on 460 records).
    windows_per_record: int = 1
    # Exponential moving average of the weights (and BatchNorm statistics), decay per optimizer step;
    # 0 = off. Validation, checkpoints and export use the averaged weights.
    ema: float = 0.0
    # Early stopping: stop after this many epochs without a better validation score; 0 = run all epochs.
    patience: int = 0
    # "shuffle": every record once per epoch (times windows_per_record); "balanced": records drawn with
    # replacement, weighted by the inverse frequency of their rarest label (compare with --pos-weight-cap).
    sampler: str = "shuffle"
    # Patient-level cross-validation: 0 = one train/val/test split; k >= 2 = k folds (central mode).
    folds: int = 0
    # Positive-class weights neg/pos, capped: rare labels (LBBB) would otherwise dominate the loss.
    pos_weight_cap: float = 20.0
    # Federated.
    partition: str = "site"  # site | iid | dirichlet
    alpha: float = 0.5
    clients: int | None = None
    rounds: int = 10
    local_epochs: int = 1
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    # Data.
    cache_dir: str = ""
    ptbxl_rate: int = 500
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    max_windows_eval: int = EVAL_MAX_WINDOWS
    # At most this many records per site, drawn with the seed before the split (0 = all): quick demos.
    max_per_site: int = 0
    # Hybrid models: hand features (cpsc2018.features) fed to the head; 0 = off.
    features: bool = False
    # Reduced lead sets (issue 21, cpsc2018.leadsets). ``leads``: a model for one fixed set ("6", "1",
    # "I,II,V2"; empty = all 12); ``lead_masking``: one model for any subset (random sets in training).
    leads: str = ""
    lead_masking: bool = False
    # Start from these weights (a checkpoint of the same model; "{fold}" is replaced by the fold number
    # under --folds). Lead-mask inputs the checkpoint lacks start at zero (resnet1d.resnet.load_widened).
    init: str = ""
    # Differential privacy (federated/privacy.py): "local" = DP-SGD (Opacus) on every client, or on the
    # pooled records in central mode; "central" = Flower's server-side wrapper noising the aggregate.
    dp: str = "none"
    epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0
    adaptive_clipping: bool = False
    # Poisoned clients (simulation only) and robust aggregation.
    attack: str = "none"
    malicious: int = 0
    attack_scale: float = 4.0
    # f of the Krum family (Krum, Multi-Krum, Bulyan); None = --malicious (the defender knows K).
    num_malicious: int | None = None
    # Norm clipping of every client's update on the server (0 = off).
    clip_updates: float = 0.0
    # Personalisation: local fine-tuning epochs of the final global model on each client (0 = off).
    personalize_epochs: int = 0

    def validate(self) -> None:
        checks = {
            "mode": ("central", "local", "federated"),
            "labels": ("six", "cpsc9"),
            "task": ("six", "beats"),
            "device": ("auto", "cpu", "cuda"),
            "partition": ("site", "iid", "dirichlet"),
            "strategy": STRATEGIES,
            "sampler": ("shuffle", "balanced"),
            "dp": ("none", "local", "central"),
            "attack": ATTACKS,
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("epochs", "rounds", "local_epochs", "batch_size", "windows_per_record"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}")
        if self.clients is not None and self.clients < 1:
            raise ValueError(f"--clients must be at least 1; got {self.clients}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"--ema must be in [0, 1) (0 = off, e.g. 0.999); got {self.ema}")
        if self.max_per_site < 0:
            raise ValueError(f"--max-per-site must be 0 (all) or positive; got {self.max_per_site}")
        if self.patience < 0:
            raise ValueError(f"--patience must be 0 (off) or positive; got {self.patience}")
        if self.folds == 1 or self.folds < 0:
            raise ValueError(f"--folds must be 0 (one split) or at least 2; got {self.folds}")
        if self.folds and self.mode != "central":
            raise ValueError("--folds runs central training per fold; use it with --mode central")
        if self.alpha <= 0:
            raise ValueError(f"--alpha must be positive; got {self.alpha}")
        # Above 2 the time stretch passes +-16 %: enough to move a PR or QRS duration across its diagnostic limit.
        if not 0 <= self.augment_strength <= 2:
            raise ValueError(f"--augment-strength must be in [0, 2]; got {self.augment_strength}")
        from federated.privacy import validate_privacy

        validate_privacy(self)
        if self.leads or self.lead_masking or self.init:
            from cpsc2018.leadsets import LeadSetError, parse_leads

            if self.leads and self.lead_masking:
                raise ValueError("--leads trains a model for one lead set, --lead-masking one for any set: give one")
            if self.mode != "central" or self.task != "six":
                raise ValueError("--leads, --lead-masking and --init are for central training of the record task (--mode central, --task six)")
            from resnet1d.resnet import LEAD_MASK_MODELS

            if (self.leads or self.lead_masking) and self.model not in LEAD_MASK_MODELS:
                raise ValueError(f"--leads and --lead-masking need one of {', '.join(LEAD_MASK_MODELS)}; {self.model} has no lead-mask input")
            if self.leads:
                try:
                    parse_leads(self.leads)
                except LeadSetError as exc:
                    raise ValueError(f"--leads: {exc}") from None
            if self.init and "{fold}" in self.init and not self.folds:
                raise ValueError("--init contains {fold} but --folds is not given")
        if self.augment_strength != 1.0 and self.mode == "federated":
            raise ValueError("--augment-strength is not passed to federated clients yet; use it in central or local mode")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "split_fractions" in d:
            d["split_fractions"] = tuple(d["split_fractions"])
        return cls(**d)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m federated.train",
        description="Train an ECG-Lite model centrally, locally per site, or federated with Flower.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=None, help="JSON config file; flags given override it")
    p.add_argument("--data", default=d.data, help="data folder (env ECG_DATA)")
    p.add_argument("--out", default=d.out, help="run folder: checkpoints, metrics, plots")
    p.add_argument("--model", default=d.model, help="model name (see resnet1d.list_models())")
    p.add_argument("--model-kwargs", type=json.loads, default={}, help="JSON constructor arguments of the model")
    p.add_argument("--mode", choices=("central", "local", "federated"), default=d.mode)
    p.add_argument("--labels", choices=("six", "cpsc9"), default=d.labels)
    p.add_argument(
        "--task", choices=("six", "beats"), default=d.task,
        help="six: 12-lead records; beats: AAMI heartbeat classes on MIT-BIH records (--data holds .hea/.dat/.atr)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from OUT/last.pt")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs (central and local modes)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument(
        "--augment", action="store_true",
        help="per-lead amplitude scale, noise, baseline wander, time shift and stretch, lead dropout",
    )
    p.add_argument("--augment-strength", type=float, default=d.augment_strength, help="scale of every augmentation (with --augment; 0-2)")
    p.add_argument("--windows-per-record", type=int, default=d.windows_per_record, help="random windows per record per epoch")
    p.add_argument("--ema", type=float, default=d.ema, help="weight moving-average decay per step (0 = off; e.g. 0.998)")
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping: epochs without a better validation score (0 = off)")
    p.add_argument("--sampler", choices=("shuffle", "balanced"), default=d.sampler, help="class-balanced sampling or plain shuffling")
    p.add_argument("--folds", type=int, default=d.folds, help="patient-level k-fold cross-validation (0 = one split)")
    p.add_argument("--pos-weight-cap", type=float, default=d.pos_weight_cap)
    p.add_argument("--partition", choices=("site", "iid", "dirichlet"), default=d.partition)
    p.add_argument("--alpha", type=float, default=d.alpha, help="Dirichlet concentration (label skew)")
    p.add_argument("--clients", type=int, default=None, help="number of federated clients")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--local-epochs", type=int, default=d.local_epochs)
    p.add_argument("--strategy", choices=STRATEGIES, default=d.strategy)
    p.add_argument("--proximal-mu", type=float, default=d.proximal_mu, help="FedProx proximal term")
    p.add_argument("--cache-dir", default=d.cache_dir, help="preprocessed-record cache (default ~/.cache/ecg-lite)")
    p.add_argument("--ptbxl-rate", type=int, choices=(100, 500), default=d.ptbxl_rate)
    p.add_argument("--features", action="store_true", help="hybrid: feed hand features to the model head")
    p.add_argument("--max-per-site", type=int, default=d.max_per_site, help="use at most N records per site, a seeded sample (0 = all)")
    p.add_argument("--leads", default=d.leads, help="train a model for one lead set: a standard set (12, 6, 4, 3, 2, 1) or names, e.g. I,II,V2")
    p.add_argument("--lead-masking", action="store_true", help="train one model for any subset of the 12 leads (random lead sets, absent leads zeroed)")
    p.add_argument("--init", default=d.init, help="start from this checkpoint's weights ({fold} = fold number under --folds)")
    g = p.add_argument_group("privacy and robustness (README: Privacy and robustness)")
    g.add_argument("--dp", choices=("none", "local", "central"), default=d.dp, help="local: DP-SGD on each client (or central mode); central: noise on the aggregate")
    g.add_argument("--epsilon", type=float, default=d.epsilon, help="--dp local: privacy budget per client over the whole run (inf = clipping only)")
    g.add_argument("--delta", type=float, default=d.delta, help="--dp local/central: delta of (epsilon, delta)")
    g.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="--dp local: per-sample gradient clipping norm")
    g.add_argument("--noise-multiplier", type=float, default=d.noise_multiplier, help="--dp central: noise std / clipping norm")
    g.add_argument("--clipping-norm", type=float, default=d.clipping_norm, help="--dp central: update clipping norm (initial norm if adaptive)")
    g.add_argument("--adaptive-clipping", action="store_true", help="--dp central: adaptive clipping (Andrew et al. 2021)")
    g.add_argument("--attack", choices=ATTACKS, default=d.attack, help="simulation only: what the malicious clients do")
    g.add_argument("--malicious", type=int, default=d.malicious, help="simulation only: number of malicious clients")
    g.add_argument("--attack-scale", type=float, default=d.attack_scale, help="factor of sign-flip/scale updates, noise std in update stds")
    g.add_argument("--num-malicious", type=int, default=None, help="f assumed by Krum/Multi-Krum/Bulyan (default: --malicious)")
    g.add_argument("--clip-updates", type=float, default=d.clip_updates, help="clip every client update to this L2 norm on the server (0 = off)")
    g.add_argument("--personalize-epochs", type=int, default=d.personalize_epochs, help="fine-tune the final global model on each client; per-site metrics")
    return p


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    base = TrainConfig().to_dict()
    if args.config is not None:
        try:
            base.update(json.loads(Path(args.config).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            parser.error(f"cannot read config file {args.config}: {exc}")
    defaults = vars(parser.parse_args([]))
    for key, value in vars(args).items():
        if key == "config":
            continue
        if args.config is None or value != defaults[key]:
            base[key] = value
    cfg = TrainConfig.from_dict(base)
    try:
        cfg.validate()
    except ValueError as exc:
        parser.error(str(exc))
    return cfg
