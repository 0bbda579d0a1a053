"""Federated beat training with Flower 1.41: clients are patients (or groups of patients), FedAvg & co.

The ClientApp is the project's one app (``federated.flower_apps.app``): its ``train``/``evaluate`` hand
a message whose config says ``task = "beats"`` to :func:`beats_train` / :func:`beats_evaluate` here. A
client's records come from

* simulation: the beat plan file written by :func:`run_federated_beats` (``beat-plan`` in the message:
  the data folder, the :class:`~cpsc2018.beats.BeatConfig` and each partition's record names), or
* deployment: node config ``data-path`` (a folder of that node's own MIT-BIH-style records).

A client trains ``local-epochs`` over its own beats with the one loop (``federated.engine``) and a
cross-entropy weighted by its own class counts (``pos-weight-cap``; 1 = off); it sends back the weights,
its beat count and loss. ``evaluate`` scores the global model on the client's own beats (loss,
accuracy, per-class F1; NaN where the client has no beat of a class). The server keeps the round with
the best macro F1 on the pooled validation records (whole patients, as in central training) and saves
``best.pt`` in the beat checkpoint format.
"""

from __future__ import annotations

import json
import logging
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from torch import nn

from cpsc2018.beat_dataset import BeatDataset
from cpsc2018.beats import BeatConfig
from cpsc2018.labels import AAMI
from cpsc2018.util import atomic_write_text
from federated.beats.data import BeatData, beat_loader, class_weights, load_beat_data
from federated.beats.metrics import format_beat_table
from federated.beats.train import (
    beat_model_kwargs, beat_model_name, client_groups, make_beat_checkpoint, score, validation_split, write_outputs,
)
from federated.checkpoint import save_checkpoint
from federated.config import TrainConfig
from federated.engine import resolve_device, train_one_epoch
from federated.outputs import write_json

log = logging.getLogger("federated")


# ---------------------------------------------------------------- client side (ClientApp handlers)


@lru_cache(maxsize=4)
def _client_beats(root: str, names: tuple[str, ...] | None, cfg_json: str) -> BeatDataset:
    """A client's beats, read once per process (a ClientApp process serves many rounds)."""
    data = load_beat_data(root, BeatConfig.from_dict(json.loads(cfg_json)), progress=False, only=list(names) if names else None)
    return BeatDataset(list(data.records.values()))


def client_dataset(context: Context, c: ConfigRecord) -> tuple[str, int, BeatDataset]:
    nc = context.node_config
    pid = int(nc.get("partition-id", 0))
    cfg_json = str(c["beat-config"])
    if "data-path" in nc:  # a deployment node: its own folder, never named by the server
        path = str(nc["data-path"])
        return str(nc.get("name", Path(path).name)), pid, _client_beats(path, None, cfg_json)
    plan = json.loads(Path(str(c["beat-plan"])).read_text())
    if pid >= len(plan["clients"]):
        raise ValueError(f"partition-id {pid} but the beat plan has {len(plan['clients'])} clients")
    client = plan["clients"][pid]
    return client["name"], pid, _client_beats(plan["data"], tuple(client["records"]), cfg_json)


def _model(c: ConfigRecord) -> nn.Module:
    from resnet1d import create_model

    return create_model(str(c["model"]), **json.loads(str(c["model-kwargs"])))


def beats_train(msg: Message, context: Context) -> Message:
    from federated.flower_apps import load_arrays, to_arrays

    c = msg.content["config"]
    name, pid, ds = client_dataset(context, c)
    torch.set_num_threads(int(c.get("threads", torch.get_num_threads())))
    round_ = int(c["server-round"])
    seed = int(c["seed"]) * 1000 + pid
    torch.manual_seed(seed * 10_007 + round_)
    device = resolve_device(str(c.get("device", "cpu")))
    model = _model(c).to(device)
    load_arrays(model, msg.content["arrays"])
    weights = class_weights(ds.class_counts(len(AAMI)), float(c["pos-weight-cap"]))
    loss_fn = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device))
    loader = beat_loader(ds, int(c["batch-size"]), train=True, balanced=str(c.get("sampler", "shuffle")) == "balanced", seed=seed)
    # A fresh optimizer each round (as the 12-lead clients): a constant learning rate decayed by round on the server side.
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(c["lr"]), weight_decay=float(c["weight-decay"]))
    global_params = [p.detach().clone() for p in model.parameters()]
    losses = []
    for e in range(int(c["local-epochs"])):
        loader.generator.manual_seed(seed * 100_003 + round_ * 1000 + e)  # type: ignore[union-attr]
        losses.append(train_one_epoch(model, loader, optimizer, loss_fn, device,
                                      proximal_mu=float(c.get("proximal-mu", 0.0)), global_params=global_params))
    metrics = MetricRecord({"train_loss": float(np.mean(losses)), "num-examples": len(ds), "client-id": pid})
    content = RecordDict({"arrays": to_arrays(model), "metrics": metrics, "node": ConfigRecord({"name": name, "partition-id": pid})})
    return Message(content=content, reply_to=msg)


def beats_evaluate(msg: Message, context: Context) -> Message:
    from federated.flower_apps import load_arrays

    c = msg.content["config"]
    name, pid, ds = client_dataset(context, c)
    device = resolve_device(str(c.get("device", "cpu")))
    model = _model(c).to(device)
    load_arrays(model, msg.content["arrays"])
    m, probs = score(model, ds, device)
    y = ds.labels.numpy()
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)))) if len(y) else math.nan
    record: dict = {"num-examples": len(ds), "client-id": pid, "loss": loss, "accuracy": float(m["accuracy"])}
    record.update({f"f1_{k}": float(v["f1"]) for k, v in m["per_class"].items()})  # NaN: no beat of that class here
    content = RecordDict({"metrics": MetricRecord(record), "node": ConfigRecord({"name": name, "partition-id": pid})})
    return Message(content=content, reply_to=msg)


# ---------------------------------------------------------------- server side (simulation)


def write_beat_plan(folder: Path, data: BeatData, groups: dict[str, list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "beat_plan.json"
    plan = {"data": data.root, "clients": [{"name": n, "records": r} for n, r in groups.items()]}
    atomic_write_text(path, json.dumps(plan, indent=1))
    return path


def simulate(cfg: TrainConfig, data: BeatData, groups: dict[str, list[str]], val_names: list[str] | None, out: Path) -> dict:
    """Run ``cfg.rounds`` FedAvg (or ``cfg.strategy``) rounds over ``groups``; returns the fit dict of
    :func:`federated.beats.train.fit_beats` (model: best round by pooled validation macro F1, or the last)."""
    from flwr.simulation import run_simulation
    from resnet1d import create_model

    from federated.flower_apps import app as client_app, load_arrays, nan_aware_average, to_arrays
    from federated.simulation import build_strategy

    if len(groups) < 2:
        raise ValueError(f"federated training needs at least 2 clients; got {len(groups)}")
    mname, kwargs = beat_model_name(cfg), beat_model_kwargs(cfg, data.cfg)
    plan_path = write_beat_plan(out / "federation", data, groups)
    device = resolve_device(cfg.device)
    val_ds = BeatDataset(data.subset(val_names)) if val_names else None
    history: list[dict] = []
    state: dict = {"best": {"round": 0, "f1": -math.inf, "state": None, "val": None}, "last": None, "clients": {}}
    torch.manual_seed(cfg.seed)
    model = create_model(mname, **kwargs)
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        def on_evaluate(records: list[RecordDict], weight_key: str) -> MetricRecord:
            for rd in records:
                for mr in rd.metric_records.values():
                    pid = int(mr.get("client-id", -1))
                    state["clients"][list(groups)[pid] if 0 <= pid < len(groups) else str(pid)] = {
                        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in mr.items()
                    }
            return nan_aware_average(records, weight_key)

        def on_train(records: list[RecordDict], weight_key: str) -> MetricRecord:
            agg = nan_aware_average(records, weight_key)
            state["train_loss"] = float(agg.get("train_loss", math.nan))
            return agg

        def server_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round == 0:
                return None
            load_arrays(model, arrays)
            model.to(device)
            row: dict = {"round": server_round, "train_loss": state.get("train_loss", math.nan)}
            state["last"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if val_ds is not None:
                m, _ = score(model, val_ds, device)
                row["val_macro_f1"] = m["macro"]["f1"]
                f1 = m["macro"]["f1"] if not math.isnan(m["macro"]["f1"]) else -1.0
                if f1 > state["best"]["f1"]:
                    state["best"] = {"round": server_round, "f1": f1, "state": state["last"], "val": m}
                log.info("round %d: train loss %.4f, val macro F1 %.3f", server_round, row["train_loss"], row["val_macro_f1"])
            else:
                log.info("round %d: train loss %.4f", server_round, row["train_loss"])
            history.append(row)
            return MetricRecord({k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not math.isnan(float(v))})

        strategy = build_strategy(cfg.strategy, len(groups), cfg.proximal_mu, on_evaluate, on_train)
        common = {
            "task": "beats", "beat-plan": str(plan_path), "beat-config": data.cfg.to_json(), "model": mname,
            "model-kwargs": json.dumps(kwargs), "seed": cfg.seed, "device": str(device), "threads": 1,
        }
        train_config = ConfigRecord({
            **common, "lr": cfg.lr, "weight-decay": cfg.weight_decay, "batch-size": cfg.batch_size,
            "local-epochs": cfg.local_epochs, "proximal-mu": cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0,
            "pos-weight-cap": cfg.pos_weight_cap, "sampler": cfg.sampler,
        })
        strategy.start(grid=grid, initial_arrays=to_arrays(model), num_rounds=cfg.rounds, train_config=train_config,
                       evaluate_config=ConfigRecord(common), evaluate_fn=server_eval)

    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": min(os.cpu_count() or 1, 2), "include_dashboard": False, "logging_level": "error"},
    }
    run_simulation(server_app=server, client_app=client_app, num_supernodes=len(groups), backend_config=backend)
    if state["last"] is None:
        raise RuntimeError("the federated beat run produced no model (see the Flower log above)")
    best = state["best"]
    model.load_state_dict(best["state"] if best["state"] is not None else state["last"])
    return {
        "model": model.eval(), "model_name": mname, "kwargs": kwargs, "history": history,
        "best_epoch": best["round"] or len(history), "val": best["val"], "clients": state["clients"],
    }


def federated_model(cfg: TrainConfig, data: BeatData, train_names: list[str]) -> nn.Module:
    """For cross-validation: a federated model over the patients of ``train_names``, last round."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ecg-lite-fedbeats-") as tmp:
        groups = client_groups(data, train_names, cfg.clients, cfg.seed)
        return simulate(cfg, data, groups, None, Path(tmp))["model"]


def run_federated_beats(cfg: TrainConfig, data: BeatData, out: Path) -> dict:
    train, val = validation_split(data, cfg)
    groups = client_groups(data, train, cfg.clients, cfg.seed)
    for g, names in groups.items():
        log.info("client %-16s records %s", g, ", ".join(names))
    fit = simulate(cfg, data, groups, val, out)
    split = {"train_records": train, "val_records": val, "test_records": [], "clients": groups}
    save_checkpoint(out / "best.pt", make_beat_checkpoint(cfg, data, fit, split, {"val": fit["val"]}))
    metrics = {"mode": "federated", "task": "beats", "best_round": fit["best_epoch"], "val": fit["val"], "clients": fit["clients"], **split}
    write_outputs(out, cfg, fit["history"], metrics)
    if fit["val"]:
        log.info("validation records %s (best round %d):\n%s", ", ".join(val), fit["best_epoch"], format_beat_table(fit["val"]))
    write_json(out / "metrics.json", metrics)
    return metrics
