"""Flower 1.41 Message-API apps. They only adapt messages to ``federated.engine``.

ClientApp: ``train`` (local epochs from the global weights; FedProx term when ``proximal-mu`` > 0)
and ``evaluate`` (the global model on the client's own validation records). Everything a client needs
arrives in the message's ConfigRecord (model, hyper-parameters, the plan file) or its node config
(``partition-id`` in simulation); nothing depends on the simulation engine, so the same app runs
under Flower's deployment engine.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn
from torch.utils.data import DataLoader

from cpsc2018.dataset import EvalWindows, TrainWindows
from federated.engine import pos_weight, predict_records, resolve_device, train_one_epoch
from federated.metrics import multilabel_metrics
from federated.plan import load_plan

app = ClientApp()

# BatchNorm's batch counter is an integer that averaging strategies would turn into a float; it is
# not used when BatchNorm has a momentum, so it never travels.
SKIP_KEYS = ("num_batches_tracked",)


def to_arrays(model: nn.Module) -> ArrayRecord:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.endswith(SKIP_KEYS)}
    return ArrayRecord(state)


def load_arrays(model: nn.Module, arrays: ArrayRecord) -> None:
    state = arrays.to_torch_state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.endswith(SKIP_KEYS)] + list(unexpected)
    if bad:
        raise ValueError(f"global weights do not fit the model: {bad[:5]}")


def _model_from_config(c: ConfigRecord) -> nn.Module:
    from resnet1d import create_model

    return create_model(str(c["model"]), **json.loads(str(c["model-kwargs"])))


def _client(context: Context, c: ConfigRecord):
    plan, cache, targets = load_plan(str(c["plan"]))
    pid = int(context.node_config.get("partition-id", 0))
    if pid >= len(plan.clients):
        raise ValueError(f"partition-id {pid} but the plan has {len(plan.clients)} clients")
    return plan.clients[pid], cache, targets, pid


@app.train()
def train(msg: Message, context: Context) -> Message:
    c = msg.content["config"]
    client, cache, targets, pid = _client(context, c)
    torch.set_num_threads(int(c.get("threads", torch.get_num_threads())))
    round_ = int(c["server-round"]) + int(c.get("round-offset", 0))
    seed = int(c["seed"]) * 1000 + pid
    torch.manual_seed(seed * 10_007 + round_)
    device = resolve_device(str(c.get("device", "cpu")))
    model = _model_from_config(c).to(device)
    load_arrays(model, msg.content["arrays"])
    global_params = [p.detach().clone() for p in model.parameters()]
    ds = TrainWindows(cache, targets, client.train, seed=seed)
    batch = int(c["batch-size"])
    gen = torch.Generator()
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=len(ds) > batch, generator=gen)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight(targets[client.train], float(c["pos-weight-cap"])).to(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(c["lr"]), weight_decay=float(c["weight-decay"]))
    losses = []
    for e in range(int(c["local-epochs"])):
        epoch = round_ * 1000 + e  # distinct crops and order each round and local epoch
        ds.set_epoch(epoch)
        gen.manual_seed(seed * 100_003 + epoch)
        aug = torch.Generator().manual_seed(seed * 7919 + epoch) if bool(c.get("augment", False)) else None
        losses.append(
            train_one_epoch(
                model, loader, optimizer, loss_fn, device, augment_gen=aug, fs=cache.cfg.fs,
                proximal_mu=float(c.get("proximal-mu", 0.0)), global_params=global_params,
            )
        )
    metrics = MetricRecord({"train_loss": float(np.mean(losses)), "num-examples": len(client.train)})
    content = RecordDict({"arrays": to_arrays(model), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Per-client validation metrics. A label without positives on this client is NaN (with the
    reason logged by the server), never 0, so it cannot drag an average down unnoticed."""
    c = msg.content["config"]
    client, cache, targets, pid = _client(context, c)
    device = resolve_device(str(c.get("device", "cpu")))
    model = _model_from_config(c).to(device)
    load_arrays(model, msg.content["arrays"])
    labels = json.loads(str(c["labels"]))
    # Every client answers with the same keys (Flower refuses to aggregate differing records); a
    # client without validation records sends NaN with weight 0.
    record: dict[str, float | int] = {"num-examples": len(client.val), "client-id": pid, "val_loss": math.nan, "macro_auroc": math.nan}
    record.update({f"{kind}_{name}": math.nan for name in labels for kind in ("f1", "auroc")})
    if client.val:
        ds = EvalWindows(cache, targets, client.val)
        probs, loss = predict_records(model, DataLoader(ds, batch_size=64), len(client.val), device, loss_fn=nn.BCEWithLogitsLoss())
        thresholds = json.loads(str(c["thresholds"])) if "thresholds" in c else [0.5] * len(labels)
        m = multilabel_metrics(targets[client.val], probs, labels, thresholds)
        record.update(val_loss=float(loss), macro_auroc=float(m["macro"]["auroc"]))
        for name, pc in m["per_class"].items():
            record[f"f1_{name}"] = float(pc["f1"])
            record[f"auroc_{name}"] = float(pc["auroc"])
    content = RecordDict({"metrics": MetricRecord(record)})
    return Message(content=content, reply_to=msg)


def nan_aware_average(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of each metric over the clients where it is defined (NaN skipped)."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for rd in records:
        for mr in rd.metric_records.values():
            w = float(mr.get(weight_key, 0))
            for k, v in mr.items():
                if k in (weight_key, "client-id") or not isinstance(v, (int, float)) or math.isnan(float(v)):
                    continue
                sums[k] = sums.get(k, 0.0) + w * float(v)
                weights[k] = weights.get(k, 0.0) + w
    return MetricRecord({k: sums[k] / weights[k] for k in sums if weights[k] > 0})
