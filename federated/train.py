"""``python -m federated.train``: central, local (per site) or federated (Flower simulation) training.

Examples::

    python -m federated.train --mode central --epochs 30 --out runs/central
    python -m federated.train --mode local --epochs 20 --out runs/local
    python -m federated.train --mode federated --partition site --rounds 20 --out runs/fed
    python -m federated.train --folds 5 --epochs 40 --patience 8 --ema 0.998 --augment --out runs/cv
    python -m federated.train --task beats --data ../shared/data/mitbih --epochs 8 --batch-size 128 --out runs/beats
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from federated.checkpoint import CheckpointError
from federated.config import TrainConfig, parse_config
from federated.data import DataError, Experiment, prepare
from federated.outputs import write_json

log = logging.getLogger("federated")


def run_local(cfg: TrainConfig, exp: Experiment, out: Path) -> dict:
    """One model per site, trained on that site's records only, all scored on the shared test split."""
    from federated.central import fit

    from federated.simulation import site_clients

    sites, notes = site_clients(cfg, exp)
    for n in notes:
        log.info(n)
    results = {}
    for name, members in sites.items():
        train_idx = [i for i in exp.split["train"] if exp.entries[i].site in members]
        val_idx = [i for i in exp.split["val"] if exp.entries[i].site in members]
        if not val_idx:
            log.info("local %s: no validation records of its own; validating on the pooled validation split", name)
            val_idx = exp.split["val"]
        sub = out / "local" / name.replace("/", "-")
        results[name] = fit(cfg, exp, sub, train_idx, val_idx, exp.split["test"], name=f"local {name}")
        results[name]["train_records"] = len(train_idx)
    summary = {"mode": "local", "sites": results}
    write_json(out / "metrics.json", summary)
    return summary


def run(cfg: TrainConfig) -> dict:
    if cfg.task == "beats":  # AAMI heartbeats on MIT-BIH records: its own data, loop and metrics
        from federated.beats import run_beats

        return run_beats(cfg)
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    exp = prepare(cfg)
    log.info(
        "%d records: train %d, val %d, test %d (patient split, seed %d)",
        len(exp.entries), len(exp.split["train"]), len(exp.split["val"]), len(exp.split["test"]), cfg.seed,
    )
    if cfg.mode == "central" and cfg.folds:
        from federated.cv import run_cv

        return run_cv(cfg, exp, out)
    if cfg.mode == "central":
        from federated.central import fit

        return fit(cfg, exp, out, exp.split["train"], exp.split["val"], exp.split["test"])
    if cfg.mode == "local":
        return run_local(cfg, exp, out)
    from federated.simulation import run_federated

    return run_federated(cfg, exp, out)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("flwr").propagate = False  # Flower prints its own log; don't print it twice
    cfg = parse_config(argv)
    try:
        metrics = run(cfg)
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    test = metrics.get("test", {}).get("macro") if isinstance(metrics.get("test"), dict) else None
    if metrics.get("mode") == "cv":
        from federated.cv import fmt

        s = metrics["summary"]["macro"]
        print(f"{cfg.folds}-fold CV test macro F1 {fmt(s['f1'])}, AUROC {fmt(s['auroc'])}; outputs in {cfg.out}")
    elif test:
        print(f"test macro F1 {test['f1']:.3f}, AUROC {test['auroc']:.3f}; outputs in {cfg.out}")
    else:
        print(f"done; outputs in {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
