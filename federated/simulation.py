"""Federated mode: Flower's simulation engine runs one ClientApp per client on this machine.

The ServerApp is built here around a Flower strategy (FedAvg, FedProx, FedAdam, FedMedian,
FedTrimmedAvg or Krum, as Flower 1.41 ships them). After every round it scores the global model on
the pooled validation records, keeps ``best.pt``, and writes ``last.pt`` (global weights, history,
strategy state) so that ``--resume`` continues a killed run at the next round.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as fl
from flwr.simulation import run_simulation
from torch import nn

from federated.central import SELECT_KEY, check_resume_compatible, finish, selection_score
from federated.checkpoint import load_checkpoint, save_checkpoint
from federated.config import TrainConfig
from federated.data import Experiment, eval_loader
from federated.engine import evaluate as score, predict_records, resolve_device
from federated.flower_apps import app as client_app, load_arrays, nan_aware_average, to_arrays
from federated.metrics import tune_thresholds
from federated.outputs import make_checkpoint, model_kwargs
from federated.partition import partition, partition_by_site
from federated import progress_hook
from federated.plan import ClientPlan, write_plan
from federated.attacks import attack_config, attack_summary, f_assumed
from federated.personalize import personalize
from federated.privacy import dp_client_config, privacy_summary

log = logging.getLogger("federated")

# Server-side optimiser state of FedOpt strategies (FedAdam): saved in last.pt so resume is exact.
STRATEGY_STATE = ("m_t", "v_t")


def build_strategy(
    name: str, n: int, mu: float, evaluate_aggr, train_aggr, *, num_malicious: int = 0, cfg: TrainConfig | None = None
) -> fl.Strategy:
    """The strategy ``name`` for ``n`` clients. ``num_malicious`` is f of the Krum family (Multi-Krum
    averages the n - f best-scored updates; Bulyan needs n >= 4f + 3). With ``cfg``, its ``--dp
    central`` or ``--clip-updates`` wraps the strategy in Flower's server-side DP wrapper (noise 0 for
    clipping alone); a DP aggregate weighs clients equally (see federated.privacy)."""
    from federated.privacy import UNIT_WEIGHT_KEY, wrap_server_dp

    dp = cfg is not None and cfg.dp == "central"
    common = dict(
        min_train_nodes=n, min_evaluate_nodes=n, min_available_nodes=n,
        evaluate_metrics_aggr_fn=evaluate_aggr, train_metrics_aggr_fn=train_aggr,
    )
    if dp:
        common["weighted_by_key"] = UNIT_WEIGHT_KEY
    inner = _base_strategy(name, n, mu, common, num_malicious)
    if dp:
        return wrap_server_dp(inner, n, noise_multiplier=cfg.noise_multiplier, clipping_norm=cfg.clipping_norm, adaptive=cfg.adaptive_clipping)
    if cfg is not None and cfg.clip_updates > 0:
        return wrap_server_dp(inner, n, noise_multiplier=0.0, clipping_norm=cfg.clip_updates)
    return inner


def _base_strategy(name: str, n: int, mu: float, common: dict, num_malicious: int) -> fl.Strategy:
    if name == "fedavg":
        return fl.FedAvg(**common)
    if name == "fedprox":
        return fl.FedProx(proximal_mu=mu, **common)
    if name == "fedadam":
        # Server learning rate 1e-2 (Reddi et al., ICLR 2021 found 1e-2..1e-1 best for Adam on the server).
        return fl.FedAdam(eta=1e-2, eta_l=1e-3, **common)
    if name == "fedmedian":
        return fl.FedMedian(**common)
    if name == "fedtrimmedavg":
        return fl.FedTrimmedAvg(beta=0.2, **common)
    if name == "krum":
        return fl.Krum(num_malicious_nodes=num_malicious, **common)
    if name == "multikrum":
        return fl.MultiKrum(num_malicious_nodes=num_malicious, num_nodes_to_select=max(n - num_malicious, 1), **common)
    if name == "bulyan":
        if n < 4 * num_malicious + 3:
            raise ValueError(
                f"--strategy bulyan with f = {num_malicious} malicious clients needs at least 4f + 3 = {4 * num_malicious + 3} "
                f"clients; this federation has {n} (lower --num-malicious or add clients)"
            )
        return fl.Bulyan(num_malicious_nodes=num_malicious, **common)
    raise ValueError(f"unknown strategy {name!r}")


def site_clients(cfg: TrainConfig, exp: Experiment) -> tuple[dict[str, set[str]], list[str]]:
    """Client name -> its sites. Decided on each site's whole record count (a hospital with 24
    records is a client, even if only 17 of them end up in the training split)."""
    clients, notes = partition_by_site(exp.entries, cfg.clients)
    return {name: {e.site for e in members} for name, members in clients.items()}, notes


def client_plans(cfg: TrainConfig, exp: Experiment) -> tuple[list[ClientPlan], list[str]]:
    if cfg.partition == "site":
        # A hospital trains on its own training records and validates on its own patients.
        sites, notes = site_clients(cfg, exp)
        plans = [
            ClientPlan(
                name,
                [i for i in exp.split["train"] if exp.entries[i].site in members],
                [i for i in exp.split["val"] if exp.entries[i].site in members],
            )
            for name, members in sites.items()
        ]
        return plans, notes
    train = [exp.entries[i] for i in exp.split["train"]]
    val = [exp.entries[i] for i in exp.split["val"]]
    pos = {e.key: i for i, e in enumerate(exp.entries)}
    clients, notes = partition(train, cfg.partition, n_clients=cfg.clients, alpha=cfg.alpha, seed=cfg.seed, label_set=cfg.labels)
    # A client without validation records of its own is fine (the server validates on the pooled records).
    vclients, _ = partition(val, cfg.partition, n_clients=cfg.clients, alpha=cfg.alpha, seed=cfg.seed + 1, label_set=cfg.labels, allow_empty=True)
    plans = [
        ClientPlan(name, [pos[e.key] for e in members], [pos[e.key] for e in vclients.get(name, [])])
        for name, members in clients.items()
    ]
    return plans, notes


def run_federated(cfg: TrainConfig, exp: Experiment, out: Path, *, in_process: bool = False) -> dict:
    """``in_process``: the same ServerApp and ClientApp without Ray (federated.inprocess), for studies
    and tests of many small federations; metrics then include bytes and seconds per round."""
    if cfg.features:
        raise ValueError("--features (hybrid head) is supported in central and local modes only")
    if cfg.dp == "local":
        from federated.privacy import private_model_kwargs

        cfg.model_kwargs = private_model_kwargs(cfg.model, cfg.model_kwargs)
        log.info("--dp local: DP-SGD on every client with %s %s", cfg.model, cfg.model_kwargs)
    plans, notes = client_plans(cfg, exp)
    for n in notes:
        log.info(n)
    if len(plans) < 2:
        raise ValueError(f"federated training needs at least 2 clients; the partition gave {len(plans)}")
    for p in plans:
        log.info("client %-28s train %4d  val %4d records", p.name, len(p.train), len(p.val))
    plan_path = write_plan(out / "federation", exp.cache, exp.targets, plans)
    history: list[dict] = []
    server_app = make_server_app(cfg, exp, out, plans, plan_path, history)
    device = resolve_device(cfg.device)
    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.5 if device.type == "cuda" else 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, "logging_level": "error"},
    }
    t0 = time.perf_counter()
    grid = None
    if in_process:
        from federated.inprocess import run_in_process

        grid = run_in_process(server_app, client_app, len(plans))
    else:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=len(plans), backend_config=backend)
    wall = time.perf_counter() - t0
    if not (out / "best.pt").exists():
        raise RuntimeError("the federated run produced no model (see the Flower log above)")
    last = load_checkpoint(out / "last.pt")
    metrics = finish(cfg, exp, out, last.progress["history"], exp.split["test"], None, x_key="round")
    metrics["clients"] = last.progress.get("clients", {})
    metrics["partition"] = {"scheme": cfg.partition, "notes": notes, "clients": {p.name: {"train": len(p.train), "val": len(p.val)} for p in plans}}
    metrics.update(privacy_summary(cfg, last.progress["history"], [p.name for p in plans], last.progress.get("dp_per_round", [])))
    metrics.update(attack_summary(cfg, [p.name for p in plans]))
    metrics["wall_seconds"] = round(wall, 2)
    if grid is not None:
        train_rounds = [r for r in grid.rounds if r["type"] == "train"]
        metrics["engine"] = {
            "kind": "in-process (federated.inprocess)", "train_rounds": len(train_rounds),
            "bytes_up_per_round": sum(r["bytes_up"] for r in train_rounds) / max(len(train_rounds), 1),
            "bytes_down_per_round": sum(r["bytes_down"] for r in train_rounds) / max(len(train_rounds), 1),
            "train_seconds_per_round": sum(r["seconds"] for r in train_rounds) / max(len(train_rounds), 1),
        }
    if cfg.personalize_epochs:
        metrics["personalized"] = personalize(cfg, exp, out, plans)
    from federated.outputs import write_json

    write_json(out / "metrics.json", metrics)
    return metrics


def make_server_app(
    cfg: TrainConfig, exp: Experiment, out: Path, plans: list[ClientPlan], plan_path: Path, history: list[dict]
) -> ServerApp:
    server = ServerApp()
    labels = list(exp.labels)
    kwargs = model_kwargs(cfg, exp, 0)
    device = resolve_device(cfg.device)
    val_idx = exp.split["val"]
    val_loader = eval_loader(exp, val_idx, cfg)
    val_targets = exp.targets[val_idx]
    no_positive = {
        p.name: [lab for k, lab in enumerate(labels) if exp.targets[p.val, k].sum() == 0] if p.val else labels
        for p in plans
    }

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        from resnet1d import create_model

        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, **kwargs)
        # dp_rounds: the rounds DP-SGD noise was calibrated for, kept on resume (a longer resumed run
        # then meets the clients' budget check instead of silently recalibrating).
        state = {"offset": 0, "best": {"score": -math.inf, "round": 0}, "clients": {}, "train_loss": math.nan, "dp_rounds": cfg.rounds, "dp_per_round": []}
        last_path = out / "last.pt"
        strategy_box: dict = {}

        def on_evaluate(records: list[RecordDict], weight_key: str) -> MetricRecord:
            per_client = {}
            for rd in records:
                for mr in rd.metric_records.values():
                    pid = int(mr.get("client-id", -1))
                    name = plans[pid].name if 0 <= pid < len(plans) else str(pid)
                    per_client[name] = {
                        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in mr.items() if not isinstance(v, list)
                    }
                    if no_positive.get(name):
                        per_client[name]["undefined"] = (
                            f"no positive validation record for {', '.join(no_positive[name])}: their F1/AUROC are NaN"
                        )
            state["clients"] = per_client
            return nan_aware_average(records, weight_key)

        def on_train(records: list[RecordDict], weight_key: str) -> MetricRecord:
            agg = nan_aware_average(records, weight_key)
            state["train_loss"] = float(agg.get("train_loss", math.nan))
            # Per-client DP-SGD spending of this round (--dp local), kept in the history row.
            state["dp_epsilon"] = {
                str(rd["node"]["name"]) if "node" in rd.config_records else str(i): float(mr["dp-epsilon"])
                for i, rd in enumerate(records) for mr in rd.metric_records.values() if "dp-epsilon" in mr
            }
            return agg

        def server_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            rnd = state["offset"] + server_round
            if server_round == 0:
                return None  # the untrained model: nothing to select or save
            load_arrays(model, arrays)
            model.to(device)
            probs, val_loss = predict_records(model, val_loader, len(val_idx), device, loss_fn=nn.BCEWithLogitsLoss())
            thresholds = tune_thresholds(val_targets, probs)
            m = score(probs, val_targets, labels, thresholds)
            row = {
                "round": rnd, "train_loss": state["train_loss"], "val_loss": val_loss,
                "val_macro_f1": m["macro"]["f1"], "val_macro_auroc": m["macro"]["auroc"],
            }
            if cfg.dp == "local":  # the history keeps the largest; metrics.json every client's
                per = dict(state.get("dp_epsilon", {}))
                row["dp_epsilon"] = max(per.values()) if per else math.nan
                state["dp_per_round"].append({"round": rnd, "epsilon": per})
                log.info("round %d: DP-SGD epsilon spent per client (delta %g): %s", rnd, cfg.delta, per)
            elif cfg.dp == "central":
                from federated.privacy import central_dp_epsilon

                row["dp_epsilon"] = central_dp_epsilon(cfg.noise_multiplier, rnd, cfg.delta)
                log.info("round %d: central DP epsilon %.3f (delta %g, client level)", rnd, row["dp_epsilon"], cfg.delta)
            history.append(row)
            log.info("round %d: val loss %.4f, val macro F1 %.3f, AUROC %.3f", rnd, val_loss, row["val_macro_f1"], row["val_macro_auroc"])
            s = selection_score(m, val_loss)
            if s > state["best"]["score"] or state["best"]["round"] == 0:
                state["best"] = {"score": s, "round": rnd}
                save_checkpoint(out / "best.pt", make_checkpoint(model, cfg, exp, kwargs, thresholds, {"val": m}, {"round": rnd}, []))
            strat = strategy_box["s"]
            progress = {
                "round": rnd, "history": list(history), "best": state["best"], "clients": state["clients"],
                "strategy_state": {k: getattr(strat, k) for k in STRATEGY_STATE if getattr(strat, k, None) is not None},
                "selected_by": SELECT_KEY, "dp_rounds": state["dp_rounds"], "dp_per_round": state["dp_per_round"],
            }
            save_checkpoint(last_path, make_checkpoint(model, cfg, exp, kwargs, thresholds, {"val": m}, progress, []))
            progress_hook.report(rnd, s)  # a hyperparameter search listening prunes here (federated.tune)
            return MetricRecord({"val_loss": float(val_loss), "val_macro_auroc": float(s if math.isfinite(s) else 0.0)})

        strategy = build_strategy(cfg.strategy, len(plans), cfg.proximal_mu, on_evaluate, on_train, num_malicious=f_assumed(cfg), cfg=cfg)
        strategy_box["s"] = strategy
        if cfg.resume and last_path.exists():
            ckpt = load_checkpoint(last_path)
            check_resume_compatible(ckpt.config, cfg, last_path)
            model.load_state_dict(ckpt.state_dict)
            p = ckpt.progress
            state.update(offset=int(p["round"]), best=p["best"], clients=p.get("clients", {}), dp_rounds=p.get("dp_rounds", cfg.rounds), dp_per_round=p.get("dp_per_round", []))
            history[:] = p["history"]
            for k, v in p.get("strategy_state", {}).items():
                setattr(strategy, k, v)
            log.info("resuming the federated run after round %d of %d", p["round"], cfg.rounds)
        remaining = cfg.rounds - state["offset"]
        if remaining <= 0:
            log.info("all %d rounds already done", cfg.rounds)
            return
        common = {
            "plan": str(plan_path), "model": cfg.model, "model-kwargs": json.dumps(kwargs), "seed": cfg.seed,
            "round-offset": state["offset"], "device": str(device), "labels": json.dumps(labels), "label-set": cfg.labels,
            # One torch thread per client: the simulation runs one client per core.
            "threads": 1,
        }
        train_config = ConfigRecord({
            **common, "lr": cfg.lr, "weight-decay": cfg.weight_decay, "batch-size": cfg.batch_size,
            "local-epochs": cfg.local_epochs, "proximal-mu": cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0,
            "pos-weight-cap": cfg.pos_weight_cap, "augment": cfg.augment,
            **dp_client_config(cfg, int(state["dp_rounds"])), **attack_config(cfg, [p.name for p in plans]),
        })
        strategy.start(
            grid=grid, initial_arrays=to_arrays(model), num_rounds=remaining,
            train_config=train_config, evaluate_config=ConfigRecord(common), evaluate_fn=server_eval,
        )

    return server
