"""The ServerApp of a real federation: Flower's deployment engine, one SuperNode per hospital.

``flwr run`` starts it on the SuperLink with the run config of ``[tool.flwr.app.config]`` in
``pyproject.toml`` (model, rounds, strategy, labels, ``out``...; override with ``--run-config``).
The server holds no record. What it receives from each node:

- ``train``: the model update (``float32`` or ``float16``), the node's name, its number of training
  records and its training loss;
- ``evaluate``: per-class metrics on the node's own validation (each round) or held-out records (once
  at the end), and per-class histograms of the node's scores for positive and negative records
  (counts in 0.001-wide bins). Summed over nodes, the histograms give pooled validation thresholds,
  F1 and AUROC, the figures the simulation computes on pooled records.

After every round it keeps ``best.pt`` (pooled validation macro AUROC, as the other modes select) and
``last.pt`` (weights, history, strategy state) so that a killed SuperLink resumes with ``resume=true``.
A node that fails or disappears is logged with its reason; the round goes on with the nodes that
answered, as long as ``min-nodes`` are connected, and the history records who took part.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from cpsc2018.labels import label_names
from cpsc2018.preprocess import PreprocessConfig
from federated.central import SELECT_KEY, check_resume_compatible
from federated.checkpoint import load_checkpoint, save_checkpoint
from federated.config import TrainConfig
from federated.flower_apps import HIST_BINS, load_arrays, nan_aware_average, to_arrays
from federated.metrics import multilabel_metrics, tune_thresholds
from federated.outputs import make_checkpoint, write_final, write_json

log = logging.getLogger("federated")

server_app = ServerApp()

# Run-config keys that are TrainConfig fields (hyphens for underscores); the rest are deployment options.
TRAIN_KEYS = (
    "model", "model-kwargs", "labels", "seed", "rounds", "local-epochs", "lr", "batch-size", "weight-decay",
    "strategy", "proximal-mu", "pos-weight-cap", "augment", "ptbxl-rate", "max-per-site",
)


@dataclass
class DeployOptions:
    out: Path
    # Fewest connected nodes a round starts with; a node that dies is dropped from later rounds, and
    # the run stops waiting (and says so) when fewer than this remain.
    min_nodes: int = 2
    # Seconds a round waits for replies; a node that has not answered by then is counted as failed.
    round_timeout: float = 600.0
    update_dtype: str = "float32"
    secagg: bool = False
    resume: bool = False


@dataclass
class _ServerSide:
    """What ``make_checkpoint`` needs from an experiment, for a server that has no records."""

    pre: PreprocessConfig
    labels: tuple[str, ...]
    split_info: dict = field(default_factory=dict)


def config_from_run(run_config: dict) -> tuple[TrainConfig, DeployOptions]:
    """TrainConfig and options from Flower's run config; a bad value names its key."""
    d = {}
    for key in TRAIN_KEYS:
        if key in run_config:
            value = run_config[key]
            if key == "model-kwargs":
                try:
                    value = json.loads(str(value) or "{}")
                except json.JSONDecodeError as exc:
                    raise ValueError(f"run config model-kwargs is not JSON: {exc}") from None
            d[key.replace("-", "_")] = value
    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **d, "mode": "federated", "device": "cpu", "data": ""})
    cfg.validate()
    if "out" not in run_config or not str(run_config["out"]):
        raise ValueError("run config needs out = \"/absolute/path/of/the/run/folder\" on the SuperLink's machine")
    dtype = str(run_config.get("update-dtype", "float32"))
    if dtype not in ("float32", "float16"):
        raise ValueError(f"run config update-dtype must be float32 or float16; got {dtype!r}")
    opts = DeployOptions(
        out=Path(str(run_config["out"])).expanduser(),
        min_nodes=int(run_config.get("min-nodes", 2)),
        round_timeout=float(run_config.get("round-timeout", 600.0)),
        update_dtype=dtype,
        secagg=bool(run_config.get("secagg", False)),
        resume=bool(run_config.get("resume", False)),
    )
    cfg.resume = opts.resume
    cfg.out = str(opts.out)
    if opts.min_nodes < 1:
        raise ValueError(f"run config min-nodes must be at least 1; got {opts.min_nodes}")
    return cfg, opts


def pooled_from_histograms(pos: np.ndarray, neg: np.ndarray, labels: list[str], thresholds: list[float] | None):
    """Metrics of the pooled records from per-class score histograms ``(C, HIST_BINS)`` (bin centres
    stand in for the scores). Returns (metrics, thresholds); thresholds are tuned for F1 when not given.
    Subset accuracy needs each record's joint labels, which histograms do not carry: it is None."""
    centres = (np.arange(HIST_BINS) + 0.5) / HIST_BINS
    n = int(pos[0].sum() + neg[0].sum()) if len(pos) else 0
    y = np.zeros((n, len(labels)), dtype=int)
    p = np.zeros((n, len(labels)))
    for k in range(len(labels)):
        yk = np.concatenate([np.ones(int(pos[k].sum()), int), np.zeros(int(neg[k].sum()), int)])
        pk = np.concatenate([np.repeat(centres, pos[k].astype(int)), np.repeat(centres, neg[k].astype(int))])
        y[: len(yk), k], p[: len(pk), k] = yk, pk
    if thresholds is None:
        thresholds = tune_thresholds(y, p)
    m = multilabel_metrics(y, p, labels, thresholds)
    m["subset_accuracy"] = None
    m["note"] = f"pooled over nodes from per-class score histograms ({HIST_BINS} bins); subset accuracy needs per-record labels"
    return m, list(thresholds)


def _sum_histograms(records: list[RecordDict], n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    pos = np.zeros((n_labels, HIST_BINS))
    neg = np.zeros((n_labels, HIST_BINS))
    for rd in records:
        for mr in rd.metric_records.values():
            if "hist-pos" in mr:
                pos += np.asarray(mr["hist-pos"], dtype=float).reshape(n_labels, HIST_BINS)
                neg += np.asarray(mr["hist-neg"], dtype=float).reshape(n_labels, HIST_BINS)
    return pos, neg


def _node_name(reply: Message) -> str:
    rec = reply.content.config_records.get("node") if reply.content is not None else None
    return str(rec["name"]) if rec is not None and "name" in rec else f"node {reply.metadata.src_node_id}"


def _array_bytes(arrays: ArrayRecord | None) -> int:
    return 0 if arrays is None else int(sum(a.numpy().nbytes for a in arrays.values()))


def run_server(grid: Grid, cfg: TrainConfig, opts: DeployOptions, site_paths: list[str] | None = None) -> dict:
    from federated.simulation import STRATEGY_STATE, build_strategy
    from resnet1d import create_model

    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    labels = list(label_names(cfg.labels))
    kwargs = {"num_classes": len(labels), "in_leads": 12, **cfg.model_kwargs}
    side = _ServerSide(
        PreprocessConfig(), tuple(labels),
        {
            "seed": cfg.seed, "fractions": list(cfg.split_fractions),
            "data": "federated deployment: each node splits its own records by patient with this seed",
            "val_ids": [], "test_ids": [], "data_options": {"ptbxl_rate": cfg.ptbxl_rate},
        },
    )
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, **kwargs)
    last_path = out / "last.pt"
    state: dict = {
        "offset": 0, "best": {"score": -math.inf, "round": 0}, "history": [], "clients": {},
        "arrays": None, "round": {}, "thresholds": [0.5] * len(labels),
    }
    if cfg.resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        check_resume_compatible(ckpt.config, cfg, last_path)
        model.load_state_dict(ckpt.state_dict)
        p = ckpt.progress
        state.update(offset=int(p["round"]), best=p["best"], history=p["history"], clients=p.get("clients", {}))
        state["thresholds"] = list(ckpt.thresholds)
        log.info("resuming the federated run after round %d of %d", p["round"], cfg.rounds)

    def on_evaluate(records: list[RecordDict], weight_key: str) -> MetricRecord:
        agg = nan_aware_average(records, weight_key)
        pos, neg = _sum_histograms(records, len(labels))
        state["pooled"] = (pos, neg)
        return agg

    def on_train(records: list[RecordDict], weight_key: str) -> MetricRecord:
        agg = nan_aware_average(records, weight_key)
        state["round"]["train_loss"] = float(agg.get("train_loss", math.nan))
        return agg

    strategy = build_strategy(cfg.strategy, opts.min_nodes, cfg.proximal_mu, on_evaluate, on_train)
    for k, v in (load_checkpoint(last_path).progress.get("strategy_state", {}) if cfg.resume and last_path.exists() else {}).items():
        setattr(strategy, k, v)
    original_train, original_evaluate = strategy.aggregate_train, strategy.aggregate_evaluate

    def aggregate_train(server_round: int, replies):
        replies = list(replies)
        ok = [r for r in replies if not r.has_error()]
        state["round"] = {
            "round": state["offset"] + server_round,
            "nodes": sorted(_node_name(r) for r in ok),
            "failed": {_node_name(r): r.error.reason for r in replies if r.has_error()},
            "bytes_up": sum(_array_bytes(r.content.array_records.get("arrays")) for r in ok),
            "bytes_down": _array_bytes(state.get("sent")) * len(replies),
            "t_start": state.get("t_round", time.time()),
        }
        for name, why in state["round"]["failed"].items():
            log.warning("round %d: %s failed: %s", state["round"]["round"], name, why)
        arrays, metrics = original_train(server_round, replies)
        if arrays is None:
            raise RuntimeError(f"round {state['round']['round']}: no node returned an update ({state['round']['failed']})")
        state["arrays"] = arrays
        return arrays, metrics

    def aggregate_evaluate(server_round: int, replies):
        replies = list(replies)
        result = original_evaluate(server_round, replies)
        row = state["round"]
        rnd = row["round"]
        per_client = {}
        for r in replies:
            if r.has_error():
                continue
            for mr in r.content.metric_records.values():
                per_client[_node_name(r)] = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in mr.items() if not isinstance(v, list)}
        state["clients"] = per_client
        pos, neg = state.get("pooled", (np.zeros((len(labels), HIST_BINS)),) * 2)
        m, thresholds = pooled_from_histograms(pos, neg, labels, None)
        val_loss = float(result.get("val_loss", math.nan)) if result is not None else math.nan
        history_row = {
            "round": rnd, "train_loss": row.get("train_loss", math.nan), "val_loss": val_loss,
            "val_macro_f1": m["macro"]["f1"], "val_macro_auroc": m["macro"]["auroc"],
            "nodes": " ".join(row["nodes"]), "failed": " ".join(row["failed"]) or "",
            "bytes_up": row["bytes_up"], "bytes_down": row["bytes_down"],
            "seconds": round(time.time() - row["t_start"], 2),
        }
        state["history"].append(history_row)
        state["t_round"] = time.time()
        log.info(
            "round %d: %s took part%s; pooled val macro F1 %.3f, AUROC %.3f; %.2f MB up, %.2f MB down",
            rnd, ", ".join(row["nodes"]), f" ({', '.join(row['failed'])} failed)" if row["failed"] else "",
            m["macro"]["f1"], m["macro"]["auroc"], row["bytes_up"] / 1e6, row["bytes_down"] / 1e6,
        )
        load_arrays(model, state["arrays"])
        score = m["macro"]["auroc"] if math.isfinite(m["macro"]["auroc"]) else -val_loss
        if score > state["best"]["score"] or state["best"]["round"] == 0:
            state["best"] = {"score": score, "round": rnd}
            state["thresholds"] = thresholds
            save_checkpoint(out / "best.pt", make_checkpoint(model, cfg, side, kwargs, thresholds, {"val": m}, {"round": rnd}, []))
        progress = {
            "round": rnd, "history": list(state["history"]), "best": state["best"], "clients": per_client,
            "strategy_state": {k: getattr(strategy, k) for k in STRATEGY_STATE if getattr(strategy, k, None) is not None},
            "selected_by": SELECT_KEY,
        }
        save_checkpoint(last_path, make_checkpoint(model, cfg, side, kwargs, thresholds, {"val": m}, progress, []))
        # A small file that says how far the run is (the rehearsal's fault injection and users watch it).
        write_json(out / "history.partial.json", {"round": rnd, "history": state["history"]})
        return result

    strategy.aggregate_train = aggregate_train  # type: ignore[method-assign]
    strategy.aggregate_evaluate = aggregate_evaluate  # type: ignore[method-assign]
    original_configure = strategy.configure_train

    def configure_train(server_round, arrays, config, grid_):
        state["sent"] = arrays
        state["t_round"] = time.time()
        return original_configure(server_round, arrays, config, grid_)

    strategy.configure_train = configure_train  # type: ignore[method-assign]

    common = {
        "model": cfg.model, "model-kwargs": json.dumps(kwargs), "seed": cfg.seed, "round-offset": state["offset"],
        "device": "cpu", "labels": json.dumps(labels), "label-set": cfg.labels, "ptbxl-rate": cfg.ptbxl_rate,
        "max-per-site": cfg.max_per_site,
    }
    if site_paths is not None:
        common["site-paths"] = json.dumps(site_paths)
    train_config = ConfigRecord({
        **common, "lr": cfg.lr, "weight-decay": cfg.weight_decay, "batch-size": cfg.batch_size,
        "local-epochs": cfg.local_epochs, "proximal-mu": cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0,
        "pos-weight-cap": cfg.pos_weight_cap, "augment": cfg.augment, "update-dtype": opts.update_dtype,
    })
    remaining = cfg.rounds - state["offset"]
    t0 = time.time()
    if remaining > 0:
        strategy.start(
            grid=grid, initial_arrays=to_arrays(model), num_rounds=remaining, timeout=opts.round_timeout,
            train_config=train_config, evaluate_config=ConfigRecord(common),
        )
    else:
        log.info("all %d rounds already done", cfg.rounds)
    return finish_deployment(grid, cfg, opts, state, common, labels, time.time() - t0)


def finish_deployment(grid: Grid, cfg: TrainConfig, opts: DeployOptions, state: dict, common: dict, labels: list[str], seconds: float) -> dict:
    """Score the best model on every connected node's held-out records; write the run folder."""
    out = opts.out
    best = load_checkpoint(out / "best.pt")
    from resnet1d import create_model

    model = create_model(best.model_name, **best.model_kwargs)
    model.load_state_dict(best.state_dict)
    config = ConfigRecord({**common, "server-round": cfg.rounds, "part": "test", "thresholds": json.dumps(best.thresholds)})
    nodes = list(grid.get_node_ids())
    messages = [
        Message(content=RecordDict({"arrays": to_arrays(model), "config": config}), dst_node_id=n, message_type=MessageType.EVALUATE)
        for n in nodes
    ]
    replies = list(grid.send_and_receive(messages, timeout=opts.round_timeout))
    ok = [r for r in replies if not r.has_error()]
    for r in replies:
        if r.has_error():
            log.warning("held-out scoring: %s failed: %s", _node_name(r), r.error.reason)
    per_node = {}
    for r in ok:
        for mr in r.content.metric_records.values():
            per_node[_node_name(r)] = {k: v for k, v in mr.items() if not isinstance(v, list)}
    pos, neg = _sum_histograms([r.content for r in ok], len(labels))
    test, _ = pooled_from_histograms(pos, neg, labels, best.thresholds)
    history = state["history"]
    bytes_up = sum(int(h.get("bytes_up", 0)) for h in history)
    bytes_down = sum(int(h.get("bytes_down", 0)) for h in history)
    metrics = {
        "mode": "federated-deployment",
        "best_round": best.progress.get("round"),
        "selected_by": "pooled validation macro AUROC (from the nodes' score histograms)",
        "val": best.metrics["val"],
        "test": test,
        "test_per_node": per_node,
        "rounds": [{k: h[k] for k in ("round", "nodes", "failed", "bytes_up", "bytes_down", "seconds") if k in h} for h in history],
        "bytes": {"up_total": bytes_up, "down_total": bytes_down, "per_round_up": bytes_up / max(len(history), 1), "update_dtype": opts.update_dtype},
        "wall_seconds": round(seconds, 1),
        "clients": state["clients"],
        "min_nodes": opts.min_nodes,
    }
    best.metrics = {"val": best.metrics["val"], "test": test}
    save_checkpoint(out / "best.pt", best)
    write_final(out, cfg, history, metrics, None, None, best.thresholds, labels, "round")
    log.info(
        "held-out records of %d node(s): pooled macro F1 %.3f, AUROC %.3f; %.1f MB sent by nodes in total",
        len(ok), test["macro"]["f1"], test["macro"]["auroc"], bytes_up / 1e6,
    )
    return metrics


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("flwr").propagate = False  # Flower prints its own log; don't print it twice
    cfg, opts = config_from_run(dict(context.run_config))
    if opts.secagg:
        from federated.secagg import run_secagg_server

        run_secagg_server(grid, context, cfg, opts)
        return
    run_server(grid, cfg, opts)


__all__ = ["server_app", "config_from_run", "pooled_from_histograms", "run_server", "write_json"]
