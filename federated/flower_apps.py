"""Flower 1.41 Message-API apps. They only adapt messages to ``federated.engine``.

ClientApp: ``train`` (local epochs from the global weights; FedProx term when ``proximal-mu`` > 0)
and ``evaluate`` (the global model on the client's own validation or held-out records). Everything a
client needs arrives in the message's ConfigRecord (model, hyper-parameters) or its node config. The
same app runs on both engines:

- simulation: node config ``partition-id``; the records come from the plan file the training command
  wrote (``plan`` in the message);
- deployment (a hospital's SuperNode): node config ``data-path`` (a folder on that machine, never sent
  by the server), optional ``name``, ``cache-dir`` and ``partition-id``. The node scans its own folder,
  splits its patients into train/validation/held-out with the run's seed, and trains on its own part.

What leaves a node: the model update (``arrays``), its record counts and loss, and on ``evaluate``
per-class metrics plus per-class histograms of its scores for positive and negative records (counts
in 1/``HIST_BINS`` bins), from which the server computes pooled thresholds, F1 and AUROC without
seeing a record or a per-record score.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from torch import nn
from torch.utils.data import DataLoader

from cpsc2018.cache import RecordCache
from cpsc2018.dataset import EvalWindows, TrainWindows
from federated.attacks import UPDATE_ATTACKS, flip_labels, poison_update
from federated.data import DataError
from federated.engine import pos_weight, predict_records, resolve_device, train_one_epoch
from federated.metrics import multilabel_metrics
from federated.plan import load_plan
from federated.privacy import UNIT_WEIGHT_KEY, BudgetExhausted
from federated.secagg import is_legacy_fit, legacy_train_reply, optional_secaggplus

# SecAgg+ runs only for the messages of its protocol (see federated.secagg).
app = ClientApp(mods=[optional_secaggplus])

# BatchNorm's batch counter is an integer that averaging strategies would turn into a float; it is
# not used when BatchNorm has a momentum, so it never travels.
SKIP_KEYS = ("num_batches_tracked",)


# Score histograms sent by ``evaluate``: 1,000 bins of width 0.001, fine enough that thresholds and
# AUROC computed from them differ from the exact per-record figures by well under 0.01.
HIST_BINS = 1000


def to_arrays(model: nn.Module, dtype: str = "float32") -> ArrayRecord:
    """The model's weights as an ArrayRecord; ``float16`` halves the bytes a node sends (the server
    averages in float32 again). Integer buffers keep their type."""
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith(SKIP_KEYS):
            continue
        v = v.detach().cpu()
        if dtype == "float16" and v.is_floating_point():
            v = v.half()
        state[k] = v
    return ArrayRecord(state)


def load_arrays(model: nn.Module, arrays: ArrayRecord) -> None:
    state = {k: v.float() if v.is_floating_point() else v for k, v in arrays.to_torch_state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.endswith(SKIP_KEYS)] + list(unexpected)
    if bad:
        raise ValueError(f"global weights do not fit the model: {bad[:5]}")


def _model_from_config(c: ConfigRecord) -> nn.Module:
    from resnet1d import create_model

    return create_model(str(c["model"]), **json.loads(str(c["model-kwargs"])))


@dataclass(frozen=True)
class NodeData:
    """The records one client trains and is scored on (indices into ``cache``/``targets``)."""

    name: str
    pid: int
    train: list[int]
    val: list[int]
    test: list[int]
    cache: RecordCache
    targets: np.ndarray


@lru_cache(maxsize=4)
def _local_data(path: str, name: str, pid: int, seed: int, labels: str, ptbxl_rate: int, max_per_site: int, cache_dir: str) -> NodeData:
    """A hospital's node: its own folder, split by patient with the run's seed. Memoised per process
    (a long-lived ClientApp process serves many rounds)."""
    from federated.config import TrainConfig
    from federated.data import prepare

    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"node {name}: data folder {path} does not exist or is not a folder")
    cfg = TrainConfig(data=path, seed=seed, labels=labels, ptbxl_rate=ptbxl_rate, max_per_site=max_per_site, cache_dir=cache_dir)
    try:
        exp = prepare(cfg, progress=False)
    except (DataError, OSError) as exc:
        raise DataError(f"node {name}: data folder {path}: {exc}") from None
    return NodeData(name, pid, exp.split["train"], exp.split["val"], exp.split["test"], exp.cache, exp.targets)


def node_data(context: Context, c: ConfigRecord) -> NodeData:
    nc = context.node_config
    pid = int(nc.get("partition-id", 0))
    # ``site-paths`` (one folder per partition-id) only comes with the simulation engine's rehearsal of a
    # deployment (``federated.deploy --engine simulation``), where every "node" is on this machine.
    if "data-path" in nc or "site-paths" in c:
        path = str(nc["data-path"]) if "data-path" in nc else json.loads(str(c["site-paths"]))[pid]
        name = str(nc.get("name", Path(path).name or path))
        return _local_data(
            path, name, pid, int(c["seed"]), str(c.get("label-set", "six")),
            int(c.get("ptbxl-rate", 500)), int(c.get("max-per-site", 0)), str(nc.get("cache-dir", "")),
        )
    if "plan" not in c:
        raise DataError("this node has no data-path in its node config (start it with --node-config 'data-path=\"/your/records\"')")
    plan, cache, targets = load_plan(str(c["plan"]))
    if pid >= len(plan.clients):
        raise ValueError(f"partition-id {pid} but the plan has {len(plan.clients)} clients")
    cp = plan.clients[pid]
    return NodeData(cp.name, pid, cp.train, cp.val, [], cache, targets)


def _node_record(node: NodeData) -> ConfigRecord:
    # Who answered: the server records which nodes took part in each round.
    return ConfigRecord({"name": node.name, "partition-id": node.pid})


@app.train()
def train(msg: Message, context: Context) -> Message:
    legacy = is_legacy_fit(msg)  # the SecAgg+ workflow speaks Flower's legacy FitIns/FitRes
    c = msg.content.config_records["fitins.config"] if legacy else msg.content["config"]
    if str(c.get("task", "six")) == "beats":  # heartbeats (MIT-BIH): federated.beats.flower
        from federated.beats.flower import beats_train

        return beats_train(msg, context)
    node = node_data(context, c)
    if not node.train:
        raise DataError(f"node {node.name}: no training records after the patient split")
    if legacy:
        keys = [k for k in _model_from_config(c).state_dict() if not k.endswith(SKIP_KEYS)]
        return legacy_train_reply(msg, node, train_local, keys)
    simulated = "data-path" not in context.node_config and "site-paths" not in c
    try:
        weights = train_local_with_metrics(node, c, msg.content["arrays"], attacks=simulated)
    except BudgetExhausted as exc:
        # No update leaves the node: an error reply, which the strategy logs with this reason.
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(exc)), reply_to=msg)
    metrics = MetricRecord({
        "train_loss": weights[1], "num-examples": len(node.train), UNIT_WEIGHT_KEY: 1, **weights[2],
    })
    content = RecordDict({"arrays": weights[0], "metrics": metrics, "node": _node_record(node)})
    return Message(content=content, reply_to=msg)


def train_local(node: NodeData, c: ConfigRecord, arrays: ArrayRecord) -> tuple[ArrayRecord, float]:
    """Local epochs from the global weights: the one training loop of ``federated.engine``."""
    new, loss, _ = train_local_with_metrics(node, c, arrays)
    return new, loss


def train_local_with_metrics(
    node: NodeData, c: ConfigRecord, arrays: ArrayRecord, *, attacks: bool = False
) -> tuple[ArrayRecord, float, dict]:
    """``train_local`` and the extra metrics of its reply.

    Returns the weights, the mean loss and extra reply metrics (``dp-epsilon``/``dp-delta`` under
    ``dp`` = ``local``). ``attacks``: apply ``attack`` if this client is in ``malicious`` (a simulation
    only: the ClientApp sets it for plan-based nodes, never for a hospital's node)."""
    torch.set_num_threads(int(c.get("threads", torch.get_num_threads())))
    round_ = int(c["server-round"]) + int(c.get("round-offset", 0))
    seed = int(c["seed"]) * 1000 + node.pid
    torch.manual_seed(seed * 10_007 + round_)
    device = resolve_device(str(c.get("device", "cpu")))
    model = _model_from_config(c).to(device)
    load_arrays(model, arrays)
    global_params = [p.detach().clone() for p in model.parameters()]
    cache, targets = node.cache, node.targets
    ds = TrainWindows(cache, targets, node.train, seed=seed)
    batch = int(c["batch-size"])
    gen = torch.Generator()
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=len(ds) > batch, generator=gen)
    attack = str(c.get("attack", "none")) if attacks and node.pid in json.loads(str(c.get("malicious", "[]"))) else "none"
    if attack == "label-flip":  # this client trains on inverted labels (a copy: the cache is shared)
        targets = flip_labels(targets, node.train)
        ds = TrainWindows(cache, targets, node.train, seed=seed)
        loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=len(ds) > batch, generator=gen)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight(targets[node.train], float(c["pos-weight-cap"])).to(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(c["lr"]), weight_decay=float(c["weight-decay"]))
    trained, extra = model, {}
    if str(c.get("dp", "none")) == "local":
        from federated.privacy import make_private, plan_local_dp

        plan = plan_local_dp(
            loader, int(c["local-epochs"]), int(c["dp-rounds"]), float(c["epsilon"]), float(c["delta"]), float(c["max-grad-norm"])
        )
        eps = plan.check(round_, f"client {node.name}")  # raises before any training past the budget
        trained, optimizer, loader = make_private(model, optimizer, loader, plan)
        extra = {"dp-epsilon": eps, "dp-delta": plan.delta, "dp-noise-multiplier": plan.noise_multiplier}
    losses = []
    for e in range(int(c["local-epochs"])):
        epoch = round_ * 1000 + e  # distinct crops and order each round and local epoch
        ds.set_epoch(epoch)
        gen.manual_seed(seed * 100_003 + epoch)
        aug = torch.Generator().manual_seed(seed * 7919 + epoch) if bool(c.get("augment", False)) else None
        losses.append(
            train_one_epoch(
                trained, loader, optimizer, loss_fn, device, augment_gen=aug, fs=cache.cfg.fs,
                proximal_mu=float(c.get("proximal-mu", 0.0)), global_params=global_params,
            )
        )
    out = to_arrays(model, str(c.get("update-dtype", "float32")))
    if attack in UPDATE_ATTACKS:
        out = poison_update(attack, arrays, out, float(c.get("attack-scale", 4.0)), seed * 31 + round_)
    return out, float(np.mean(losses)), extra


def score_histograms(y: np.ndarray, probs: np.ndarray) -> tuple[list[int], list[int]]:
    """Per class, counts of positive and negative records per score bin, flattened class-major."""
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    pos, neg = [], []
    for k in range(probs.shape[1]):
        p = np.clip(probs[:, k], 0.0, 1.0)
        pos += np.histogram(p[y[:, k] == 1], bins=edges)[0].astype(int).tolist()
        neg += np.histogram(p[y[:, k] == 0], bins=edges)[0].astype(int).tolist()
    return pos, neg


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Per-client metrics on its validation records (``part`` = ``val``, every round) or its held-out
    records (``part`` = ``test``, once at the end of a deployment run). A label without positives on
    this client is NaN (with the reason logged by the server), never 0, so it cannot drag an average
    down unnoticed."""
    c = msg.content["config"]
    if str(c.get("task", "six")) == "beats":  # heartbeats (MIT-BIH): federated.beats.flower
        from federated.beats.flower import beats_evaluate

        return beats_evaluate(msg, context)
    node = node_data(context, c)
    part = str(c.get("part", "val"))
    idx = node.test if part == "test" else node.val
    device = resolve_device(str(c.get("device", "cpu")))
    model = _model_from_config(c).to(device)
    load_arrays(model, msg.content["arrays"])
    labels = json.loads(str(c["labels"]))
    # Every client answers with the same keys (Flower refuses to aggregate differing records); a
    # client without records in this part sends NaN with weight 0.
    record: dict = {
        "num-examples": len(idx), UNIT_WEIGHT_KEY: 1, "client-id": node.pid, "val_loss": math.nan, "macro_auroc": math.nan,
    }
    record.update({f"{kind}_{name}": math.nan for name in labels for kind in ("f1", "auroc")})
    probs = np.zeros((0, len(labels)))
    if idx:
        ds = EvalWindows(node.cache, node.targets, idx)
        probs, loss = predict_records(model, DataLoader(ds, batch_size=64), len(idx), device, loss_fn=nn.BCEWithLogitsLoss())
        thresholds = json.loads(str(c["thresholds"])) if "thresholds" in c else [0.5] * len(labels)
        m = multilabel_metrics(node.targets[idx], probs, labels, thresholds)
        record.update(val_loss=float(loss), macro_auroc=float(m["macro"]["auroc"]))
        for name, pc in m["per_class"].items():
            record[f"f1_{name}"] = float(pc["f1"])
            record[f"auroc_{name}"] = float(pc["auroc"])
    pos, neg = score_histograms(node.targets[idx] if idx else np.zeros((0, len(labels))), probs)
    record.update({"hist-pos": pos, "hist-neg": neg})
    content = RecordDict({"metrics": MetricRecord(record), "node": _node_record(node)})
    return Message(content=content, reply_to=msg)


def nan_aware_average(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of each metric over the clients where it is defined (NaN skipped)."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for rd in records:
        for mr in rd.metric_records.values():
            w = float(mr.get(weight_key, 0))
            for k, v in mr.items():
                if k in (weight_key, "client-id", UNIT_WEIGHT_KEY) or not isinstance(v, (int, float)) or math.isnan(float(v)):
                    continue
                sums[k] = sums.get(k, 0.0) + w * float(v)
                weights[k] = weights.get(k, 0.0) + w
    return MetricRecord({k: sums[k] / weights[k] for k in sums if weights[k] > 0})
