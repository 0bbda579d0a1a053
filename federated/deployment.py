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
from federated.simulation import STRATEGY_STATE
from federated.metrics import multilabel_metrics, tune_thresholds
from federated.privacy import central_dp_epsilon, dp_client_config, privacy_summary
from federated.outputs import make_checkpoint, write_final, write_json

log = logging.getLogger("federated")

server_app = ServerApp()

# Run-config keys that are TrainConfig fields (hyphens for underscores); the rest are deployment options.
TRAIN_KEYS = (
    "model", "model-kwargs", "labels", "seed", "rounds", "local-epochs", "lr", "batch-size", "weight-decay",
    "strategy", "proximal-mu", "pos-weight-cap", "augment", "ptbxl-rate", "max-per-site",
    # Differential privacy (federated.privacy): DP-SGD on each node, or noise on the server's aggregate.
    "dp", "epsilon", "delta", "max-grad-norm", "noise-multiplier", "clipping-norm", "adaptive-clipping", "clip-updates",
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


# Node id -> the name the node reported (a failed reply has no content, so its name comes from here).
NODE_NAMES: dict[int, str] = {}


def _node_name(reply: Message) -> str:
    nid = int(reply.metadata.src_node_id)
    rec = reply.content.config_records.get("node") if reply.has_content() else None
    if rec is not None and "name" in rec:
        NODE_NAMES[nid] = str(rec["name"])
    return NODE_NAMES.get(nid, f"node {nid}")


def _array_bytes(arrays: ArrayRecord | None) -> int:
    return 0 if arrays is None else int(sum(a.numpy().nbytes for a in arrays.values()))


class CountingGrid:
    """The Grid, counting the payload bytes of every message sent and received, per message type
    (weights, histograms, SecAgg+ keys, shares and masked vectors alike)."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.sent: dict[str, int] = {}
        self.received: dict[str, int] = {}

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        messages = list(messages)
        for m in messages:
            self.sent[m.metadata.message_type] = self.sent.get(m.metadata.message_type, 0) + payload_bytes(m)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for r in replies:
            if r.has_content():
                self.received[r.metadata.message_type] = self.received.get(r.metadata.message_type, 0) + payload_bytes(r)
        return replies

    def take(self) -> tuple[int, int]:
        """Train-message bytes (received from nodes, sent to nodes) since the last call."""
        up, down = self.received.get(MessageType.TRAIN, 0), self.sent.get(MessageType.TRAIN, 0)
        self.received[MessageType.TRAIN] = self.sent[MessageType.TRAIN] = 0
        return up, down


def payload_bytes(msg: Message) -> int:
    """Bytes of a message's content: arrays at their dtype, config bytes/strings at their length,
    numbers at 8 bytes. Flower's framing adds a little on top."""
    if not msg.has_content():
        return 0
    n = 0
    for rec in msg.content.array_records.values():
        n += _array_bytes(rec)
    for rec in list(msg.content.config_records.values()) + list(msg.content.metric_records.values()):
        for v in rec.values():
            items = v if isinstance(v, list) else [v]
            n += sum(len(x) if isinstance(x, (bytes, str)) else 8 for x in items)
    return n


class RoundKeeper:
    """The server's bookkeeping for one run, shared by the plain and the SecAgg+ paths: who took part,
    bytes, pooled validation metrics, selection, ``best.pt``/``last.pt``, the final held-out scoring."""

    def __init__(self, cfg: TrainConfig, opts: DeployOptions, grid: CountingGrid) -> None:
        from resnet1d import create_model

        self.cfg, self.opts, self.grid = cfg, opts, grid
        self.out = opts.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.labels = list(label_names(cfg.labels))
        if cfg.dp == "local":  # DP-SGD needs the model's GroupNorm variant (checked by Opacus)
            from federated.privacy import private_model_kwargs

            cfg.model_kwargs = private_model_kwargs(cfg.model, cfg.model_kwargs)
        self.kwargs = {"num_classes": len(self.labels), "in_leads": 12, **cfg.model_kwargs}
        self.side = _ServerSide(
            PreprocessConfig(), tuple(self.labels),
            {
                "seed": cfg.seed, "fractions": list(cfg.split_fractions),
                "data": "federated deployment: each node splits its own records by patient with this seed",
                "val_ids": [], "test_ids": [], "data_options": {"ptbxl_rate": cfg.ptbxl_rate},
            },
        )
        torch.manual_seed(cfg.seed)
        self.model = create_model(cfg.model, **self.kwargs)
        self.last_path = self.out / "last.pt"
        self.offset = 0
        self.best = {"score": -math.inf, "round": 0}
        self.history: list[dict] = []
        self.clients: dict = {}
        self.strategy_state: dict = {}
        self.round: dict = {}
        self.dp_per_round: list[dict] = []
        self.t_round = time.time()
        self.t0 = time.time()
        if cfg.resume and self.last_path.exists():
            ckpt = load_checkpoint(self.last_path)
            check_resume_compatible(ckpt.config, cfg, self.last_path)
            self.model.load_state_dict(ckpt.state_dict)
            p = ckpt.progress
            self.offset, self.best, self.history = int(p["round"]), p["best"], p["history"]
            self.clients = p.get("clients", {})
            self.strategy_state = p.get("strategy_state", {})
            log.info("resuming the federated run after round %d of %d", self.offset, cfg.rounds)
        self.common = {
            "model": cfg.model, "model-kwargs": json.dumps(self.kwargs), "seed": cfg.seed, "round-offset": self.offset,
            "device": "cpu", "labels": json.dumps(self.labels), "label-set": cfg.labels, "ptbxl-rate": cfg.ptbxl_rate,
            "max-per-site": cfg.max_per_site,
        }
        self.train_config = {
            **self.common, "lr": cfg.lr, "weight-decay": cfg.weight_decay, "batch-size": cfg.batch_size,
            "local-epochs": cfg.local_epochs, "proximal-mu": cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0,
            "pos-weight-cap": cfg.pos_weight_cap, "augment": cfg.augment, "update-dtype": opts.update_dtype,
            **dp_client_config(cfg, cfg.rounds),
        }

    @property
    def remaining(self) -> int:
        return self.cfg.rounds - self.offset

    def start_round(self) -> None:
        self.t_round = time.time()

    def end_train(self, server_round: int, nodes: list[str], failed: dict[str, str]) -> None:
        rnd = self.offset + server_round
        for name, why in failed.items():
            log.warning("round %d: %s failed: %s", rnd, name, why)
        self.round = {"round": rnd, "nodes": sorted(nodes), "failed": failed}

    def end_evaluate(self, arrays: ArrayRecord, replies: list[Message], strategy=None) -> MetricRecord:
        """Pooled validation metrics from the nodes' histograms; keep best.pt and last.pt."""
        row = self.round
        rnd = row["round"]
        ok = [r for r in replies if not r.has_error()]
        agg = nan_aware_average([r.content for r in ok], "num-examples")
        self.clients = {
            _node_name(r): {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in mr.items() if not isinstance(v, list)}
            for r in ok for mr in r.content.metric_records.values()
        }
        pos, neg = _sum_histograms([r.content for r in ok], len(self.labels))
        m, thresholds = pooled_from_histograms(pos, neg, self.labels, None)
        val_loss = float(agg.get("val_loss", math.nan))
        up, down = self.grid.take()
        self.history.append({
            "round": rnd, "train_loss": row.get("train_loss", math.nan), "val_loss": val_loss,
            "val_macro_f1": m["macro"]["f1"], "val_macro_auroc": m["macro"]["auroc"],
            "nodes": " ".join(row["nodes"]), "failed": " ".join(row["failed"]),
            "failed_reasons": "; ".join(f"{k}: {v}" for k, v in row["failed"].items()),
            "bytes_up": up, "bytes_down": down, "seconds": round(time.time() - self.t_round, 2),
            **self._privacy_spent(rnd),
        })
        log.info(
            "round %d: %s took part%s; pooled val macro F1 %.3f, AUROC %.3f; %.2f MB up, %.2f MB down",
            rnd, ", ".join(row["nodes"]), f" ({', '.join(row['failed'])} failed)" if row["failed"] else "",
            m["macro"]["f1"], m["macro"]["auroc"], up / 1e6, down / 1e6,
        )
        load_arrays(self.model, arrays)
        score = m["macro"]["auroc"] if math.isfinite(m["macro"]["auroc"]) else -val_loss
        if score > self.best["score"] or self.best["round"] == 0:
            self.best = {"score": score, "round": rnd}
            save_checkpoint(self.out / "best.pt", self._checkpoint(thresholds, {"val": m}, {"round": rnd}))
        if strategy is not None:
            self.strategy_state = {k: getattr(strategy, k) for k in STRATEGY_STATE if getattr(strategy, k, None) is not None}
        progress = {
            "round": rnd, "history": list(self.history), "best": self.best, "clients": self.clients,
            "strategy_state": self.strategy_state, "selected_by": SELECT_KEY,
        }
        save_checkpoint(self.last_path, self._checkpoint(thresholds, {"val": m}, progress))
        # A small file that says how far the run is (the rehearsal's fault injection and users watch it).
        write_json(self.out / "history.partial.json", {"round": rnd, "history": self.history})
        self.t_round = time.time()
        return agg

    def _privacy_spent(self, rnd: int) -> dict:
        """The epsilon spent so far: the largest of the nodes' DP-SGD accountants (``dp local``), or the
        client-level epsilon of ``rnd`` noised aggregates (``dp central``)."""
        if self.cfg.dp == "local":
            per = self.round.get("dp_epsilon", {})
            self.dp_per_round.append({"round": rnd, "epsilon": per})
            if per:
                log.info("round %d: DP-SGD epsilon spent per node (delta %g): %s", rnd, self.cfg.delta, per)
            return {"dp_epsilon": max(per.values()) if per else math.nan}
        if self.cfg.dp == "central":
            return {"dp_epsilon": central_dp_epsilon(self.cfg.noise_multiplier, rnd, self.cfg.delta)}
        return {}

    def _checkpoint(self, thresholds: list[float], metrics: dict, progress: dict):
        return make_checkpoint(self.model, self.cfg, self.side, self.kwargs, thresholds, metrics, progress, [])

    def evaluate_on_nodes(self, arrays: ArrayRecord, part: str, server_round: int, thresholds: list[float] | None = None) -> list[Message]:
        """Send an evaluate message to every connected node; return the replies (failures logged)."""
        config = {**self.common, "server-round": server_round, "part": part}
        if thresholds is not None:
            config["thresholds"] = json.dumps(thresholds)
        messages = [
            Message(content=RecordDict({"arrays": arrays, "config": ConfigRecord(config)}), dst_node_id=n, message_type=MessageType.EVALUATE)
            for n in self.grid.get_node_ids()
        ]
        replies = list(self.grid.send_and_receive(messages, timeout=self.opts.round_timeout))
        for r in replies:
            if r.has_error():
                log.warning("%s scoring: a node failed: %s", part, r.error.reason)
        return replies

    def finish(self) -> dict:
        """Score the best model on every connected node's held-out records; write the run folder."""
        from resnet1d import create_model

        best = load_checkpoint(self.out / "best.pt")
        model = create_model(best.model_name, **best.model_kwargs)
        model.load_state_dict(best.state_dict)
        replies = self.evaluate_on_nodes(to_arrays(model), "test", self.cfg.rounds, best.thresholds)
        ok = [r for r in replies if not r.has_error()]
        per_node = {_node_name(r): {k: v for k, v in mr.items() if not isinstance(v, list)} for r in ok for mr in r.content.metric_records.values()}
        pos, neg = _sum_histograms([r.content for r in ok], len(self.labels))
        test, _ = pooled_from_histograms(pos, neg, self.labels, best.thresholds)
        h = self.history
        up = sum(int(x.get("bytes_up", 0)) for x in h)
        down = sum(int(x.get("bytes_down", 0)) for x in h)
        metrics = {
            "mode": "federated-deployment",
            "best_round": best.progress.get("round"),
            "selected_by": "pooled validation macro AUROC (from the nodes' score histograms)",
            "val": best.metrics["val"],
            "test": test,
            "test_per_node": per_node,
            "rounds": [{k: x[k] for k in ("round", "nodes", "failed", "failed_reasons", "bytes_up", "bytes_down", "seconds") if k in x} for x in h],
            "bytes": {
                "up_total": up, "down_total": down, "up_per_round": up / max(len(h), 1),
                "update_dtype": self.opts.update_dtype, "secagg": self.opts.secagg,
                "counted": "payload of training messages (weights, or SecAgg+ keys, shares and masked vectors)",
            },
            "wall_seconds": round(time.time() - self.t0, 1),
            "clients": self.clients,
            "min_nodes": self.opts.min_nodes,
            **privacy_summary(self.cfg, h, sorted({n for x in h for n in str(x.get("nodes", "")).split()}), self.dp_per_round),
        }
        best.metrics = {"val": best.metrics["val"], "test": test}
        save_checkpoint(self.out / "best.pt", best)
        write_final(self.out, self.cfg, h, metrics, None, None, best.thresholds, self.labels, "round")
        log.info(
            "held-out records of %d node(s): pooled macro F1 %.3f, AUROC %.3f; %.2f MB sent by nodes in training messages",
            len(ok), test["macro"]["f1"], test["macro"]["auroc"], up / 1e6,
        )
        return metrics


def run_server(grid: Grid, cfg: TrainConfig, opts: DeployOptions, site_paths: list[str] | None = None) -> dict:
    """Message-API strategy (FedAvg, FedProx, FedAdam, FedMedian...) rounds, then held-out scoring."""
    from federated.simulation import build_strategy

    grid = CountingGrid(grid)
    keeper = RoundKeeper(cfg, opts, grid)
    if site_paths is not None:
        keeper.common["site-paths"] = keeper.train_config["site-paths"] = json.dumps(site_paths)
    if opts.secagg:
        from federated.secagg import run_secagg_rounds

        run_secagg_rounds(grid, keeper)
        return keeper.finish()

    def on_train(records: list[RecordDict], weight_key: str) -> MetricRecord:
        agg = nan_aware_average(records, weight_key)
        keeper.round["train_loss"] = float(agg.get("train_loss", math.nan))
        return agg

    strategy = build_strategy(cfg.strategy, opts.min_nodes, cfg.proximal_mu, nan_aware_average, on_train, cfg=cfg)
    for k, v in keeper.strategy_state.items():
        setattr(strategy, k, v)
    original_configure, original_train = strategy.configure_train, strategy.aggregate_train
    box: dict = {}

    def configure_train(server_round, arrays, config, grid_):
        keeper.start_round()
        messages = list(original_configure(server_round, arrays, config, grid_))
        box["sampled"] = [int(m.metadata.dst_node_id) for m in messages]
        return messages

    def aggregate_train(server_round: int, replies):
        replies = list(replies)
        ok = [r for r in replies if not r.has_error()]
        names = [_node_name(r) for r in ok]  # learn the names before naming failures
        # An error reply comes from the SuperLink, not from the node: name the sampled nodes that did
        # not answer, with the reasons the SuperLink gave.
        answered = {int(r.metadata.src_node_id) for r in ok}
        silent = sorted(NODE_NAMES.get(n, f"node {n}") for n in box.get("sampled", []) if n not in answered)
        reasons = [r.error.reason for r in replies if r.has_error()]
        keeper.end_train(server_round, names, {n: (reasons[i] if i < len(reasons) else "no reply") for i, n in enumerate(silent)})
        keeper.round["dp_epsilon"] = {
            _node_name(r): float(mr["dp-epsilon"]) for r in ok for mr in r.content.metric_records.values() if "dp-epsilon" in mr
        }
        arrays, metrics = original_train(server_round, replies)
        if arrays is None:
            raise RuntimeError(f"round {keeper.round['round']}: no node returned an update ({keeper.round['failed']})")
        box["arrays"] = arrays
        return arrays, metrics

    def aggregate_evaluate(server_round: int, replies):
        return keeper.end_evaluate(box["arrays"], list(replies), strategy)

    strategy.configure_train = configure_train  # type: ignore[method-assign]
    strategy.aggregate_train = aggregate_train  # type: ignore[method-assign]
    strategy.aggregate_evaluate = aggregate_evaluate  # type: ignore[method-assign]
    if keeper.remaining > 0:
        strategy.start(
            grid=grid, initial_arrays=to_arrays(keeper.model), num_rounds=keeper.remaining, timeout=opts.round_timeout,
            train_config=ConfigRecord(keeper.train_config), evaluate_config=ConfigRecord(keeper.common),
        )
    else:
        log.info("all %d rounds already done", cfg.rounds)
    return keeper.finish()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("flwr").propagate = False  # Flower prints its own log; don't print it twice
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    cfg, opts = config_from_run(dict(context.run_config))
    run_server(grid, cfg, opts)


