"""Poisoned clients and robust aggregation (federated/attacks.py, build_strategy) on real short trainings;
partitions as pure functions; attack flags refused outside the simulation."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict

from federated.attacks import choose_malicious, flip_labels, poison_update
from federated.config import TrainConfig, parse_config
from federated.flower_apps import NodeData, load_arrays, to_arrays, train_local_with_metrics
from federated.partition import partition
from federated.simulation import build_strategy

TINY = {"widths": [8, 8, 16, 16]}


@pytest.fixture(scope="module")
def exp(small_data, tmp_path_factory):
    from federated.data import prepare

    cfg = TrainConfig(data=str(small_data), seed=0, max_per_site=40, cache_dir=str(tmp_path_factory.mktemp("cache")), workers=0)
    return prepare(cfg, progress=False)


def _reply(content: RecordDict, pid: int) -> Message:
    # A train reply as a SuperNode sends it (the strategies read only content and the error flag).
    meta = Metadata(run_id=0, message_id=str(pid), src_node_id=pid + 1, dst_node_id=0, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=3600.0, message_type="train")
    return Message(content=content, metadata=meta)


def _loss(model, exp, idx: list[int]) -> float:
    """Mean binary cross-entropy against the true labels (label flipping shows first in the classes'
    offsets, which a rank measure such as AUROC does not see)."""
    from torch.utils.data import DataLoader

    from cpsc2018.dataset import EvalWindows
    from federated.engine import predict_records

    loader = DataLoader(EvalWindows(exp.cache, exp.targets, idx), batch_size=64)
    return predict_records(model, loader, len(idx), torch.device("cpu"), loss_fn=torch.nn.BCEWithLogitsLoss())[1]


def test_label_flip_hurts_fedavg_more_than_median_and_krum(exp):
    """Seven clients train one round from the same warm global model; in the attacked round the two
    largest (a poisoned big hospital: FedAvg weighs by record count, median and Krum do not) train on
    inverted labels. Each strategy's own aggregation of these real updates is scored
    (cross-entropy against the true labels of every record of the subset), clean and attacked: the
    attack costs FedAvg more than FedMedian and Krum."""
    from resnet1d import create_model

    torch.manual_seed(0)
    model = create_model("resnet1d18", num_classes=len(exp.labels), **TINY)
    train = exp.split["train"]
    c = {
        "model": "resnet1d18", "model-kwargs": json.dumps({"num_classes": len(exp.labels), **TINY}), "seed": 0, "lr": 3e-3,
        "weight-decay": 0.0, "batch-size": 16, "pos-weight-cap": 20.0, "threads": 1,
    }
    # Warm start: a few epochs on all training records, so that the global model has something to lose.
    warm_node = NodeData("all", 99, train, [], [], exp.cache, exp.targets)
    g, _, _ = train_local_with_metrics(warm_node, ConfigRecord({**c, "server-round": 0, "local-epochs": 4}), to_arrays(model))
    n, bad = 7, [0, 1]
    cfg = ConfigRecord({**c, "server-round": 1, "local-epochs": 4, "lr": 1e-2, "attack": "label-flip", "malicious": json.dumps(bad)})
    cuts = (np.cumsum([3, 3, 1, 1, 1, 1]) * len(train) // 11).tolist()
    shards = np.split(np.array(train), cuts)
    clean, attacked = [], []
    for pid in range(n):
        node = NodeData(f"c{pid}", pid, shards[pid].tolist(), [], [], exp.cache, exp.targets)
        w, loss, _ = train_local_with_metrics(node, cfg, g, attacks=False)
        clean.append((w.to_torch_state_dict(), len(node.train), loss))
        if pid in bad:
            w, loss, _ = train_local_with_metrics(node, cfg, g, attacks=True)
        attacked.append((w.to_torch_state_dict(), len(node.train), loss))

    def replies(updates) -> list[Message]:  # fresh records per strategy: aggregation consumes its input arrays
        return [
            _reply(RecordDict({"arrays": ArrayRecord({k: v.clone() for k, v in w.items()}), "metrics": MetricRecord({"num-examples": k, "train_loss": loss})}), pid)
            for pid, (w, k, loss) in enumerate(updates)
        ]
    every = list(range(len(exp.entries)))
    harm = {}
    for name in ("fedavg", "fedmedian", "krum"):
        losses = []
        for updates in (clean, attacked):
            arrays, _ = build_strategy(name, n, 0.0, None, None, num_malicious=len(bad)).aggregate_train(1, replies(updates))
            load_arrays(model, arrays)
            losses.append(_loss(model, exp, every))
        harm[name] = losses[1] - losses[0]
    assert harm["fedavg"] > 0.05, harm
    assert harm["fedavg"] > 2 * max(harm["fedmedian"], harm["krum"]), harm


def test_update_attacks_act_on_the_update():
    g = ArrayRecord({"w": torch.zeros(4), "n": torch.tensor([3])})
    local = ArrayRecord({"w": torch.tensor([1.0, -1.0, 2.0, 0.0]), "n": torch.tensor([3])})
    flipped = poison_update("sign-flip", g, local, 4.0, 0).to_torch_state_dict()
    assert torch.equal(flipped["w"], torch.tensor([-4.0, 4.0, -8.0, 0.0])) and torch.equal(flipped["n"], torch.tensor([3]))
    assert torch.equal(poison_update("scale", g, local, 4.0, 0).to_torch_state_dict()["w"], torch.tensor([4.0, -4.0, 8.0, 0.0]))
    noisy = poison_update("noise", g, local, 4.0, 0).to_torch_state_dict()["w"]
    assert not torch.equal(noisy, local.to_torch_state_dict()["w"]) and torch.isfinite(noisy).all()
    y = np.array([[1, 0], [0, 0], [1, 1]])
    assert flip_labels(y, [0, 2]).tolist() == [[0, 1], [0, 0], [0, 0]] and y.tolist() == [[1, 0], [0, 0], [1, 1]]
    assert choose_malicious(7, 2, 0) == choose_malicious(7, 2, 0) and len(set(choose_malicious(7, 2, 0))) == 2
    with pytest.raises(ValueError, match="--malicious 7"):
        choose_malicious(7, 7, 0)


def test_bulyan_refuses_too_few_clients():
    with pytest.raises(ValueError, match=r"bulyan with f = 1 .* at least 4f \+ 3 = 7 clients; this federation has 6"):
        build_strategy("bulyan", 6, 0.0, None, None, num_malicious=1)
    assert build_strategy("bulyan", 7, 0.0, None, None, num_malicious=1).num_malicious_nodes == 1
    mk = build_strategy("multikrum", 7, 0.0, None, None, num_malicious=2)
    assert mk.num_malicious_nodes == 2 and mk.num_nodes_to_select == 5


def test_update_clipping_wraps_with_flowers_fixed_clipping_without_noise():
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    s = build_strategy("fedmedian", 5, 0.0, None, None, cfg=TrainConfig(mode="federated", clip_updates=0.3))
    assert isinstance(s, DifferentialPrivacyServerSideFixedClipping) and s.noise_multiplier == 0.0 and s.clipping_norm == 0.3


def test_attack_flags_refused_outside_the_simulation(capsys):
    for argv, msg in (
        (["--mode", "central", "--attack", "label-flip", "--malicious", "1"], "federated simulation only; this run is --mode central"),
        (["--mode", "local", "--attack", "scale", "--malicious", "1"], "this run is --mode local"),
        (["--mode", "federated", "--attack", "noise"], "needs --malicious K >= 1"),
        (["--mode", "federated", "--malicious", "2"], "needs --attack"),
    ):
        with pytest.raises(SystemExit):
            parse_config(argv)
        assert msg in capsys.readouterr().err


def test_attack_never_applied_on_a_deployment_node(exp):
    """The ClientApp applies attacks only to simulation clients (``attacks=False`` for a data-path node)."""
    from resnet1d import create_model

    torch.manual_seed(0)
    g = to_arrays(create_model("resnet1d18", num_classes=len(exp.labels), **TINY))
    c = ConfigRecord({
        "model": "resnet1d18", "model-kwargs": json.dumps({"num_classes": len(exp.labels), **TINY}), "seed": 0, "lr": 1e-3,
        "weight-decay": 0.0, "batch-size": 16, "pos-weight-cap": 20.0, "threads": 1, "server-round": 1, "local-epochs": 1,
        "attack": "scale", "malicious": "[0]",
    })
    node = NodeData("c0", 0, exp.split["train"][:20], [], [], exp.cache, exp.targets)
    honest, _, _ = train_local_with_metrics(node, c, g, attacks=False)
    poisoned, _, _ = train_local_with_metrics(node, c, g, attacks=True)
    h, p0, g0 = (np.concatenate([a.numpy().ravel() for a in r.values()]) for r in (honest, poisoned, g))
    np.testing.assert_allclose(p0 - g0, 4.0 * (h - g0), rtol=1e-4, atol=1e-5)


def _entries(exp):
    return [exp.entries[i] for i in exp.split["train"]]


def test_partitions_are_pure_and_cover_every_record_once(exp):
    entries = _entries(exp)
    for scheme, kw in (("site", {"n_clients": None}), ("iid", {"n_clients": 4}), ("dirichlet", {"n_clients": 3, "alpha": 0.5})):
        a, _ = partition(entries, scheme, seed=3, **kw)
        b, _ = partition(list(entries), scheme, seed=3, **kw)
        assert {k: [e.key for e in v] for k, v in a.items()} == {k: [e.key for e in v] for k, v in b.items()}
        keys = [e.key for v in a.values() for e in v]
        assert sorted(keys) == sorted(e.key for e in entries) and len(keys) == len(set(keys)), scheme


def test_dirichlet_skew_grows_as_alpha_falls(small_catalog):
    """Label skew: mean total-variation distance between a client's label mix and the pooled mix,
    averaged over seeds, rises as alpha falls (0.1 > 0.5 > 1.0)."""
    entries = [e for e in small_catalog.entries if e.n_leads == 12]

    def skew(alpha: float) -> float:
        out = []
        for seed in range(6):
            try:
                clients, _ = partition(entries, "dirichlet", n_clients=4, alpha=alpha, seed=seed)
            except ValueError:  # a client left empty: the most skewed outcome, counted as such
                out.append(1.0)
                continue
            primary = lambda e: int(np.argmax(e.targets("six"))) if np.any(e.targets("six")) else -1  # noqa: E731
            classes = sorted({primary(e) for e in entries})
            pooled = np.array([sum(primary(e) == k for e in entries) for k in classes], float)
            pooled /= pooled.sum()
            for v in clients.values():
                mix = np.array([sum(primary(e) == k for e in v) for k in classes], float)
                out.append(0.5 * np.abs(mix / mix.sum() - pooled).sum())
        return float(np.mean(out))

    s01, s05, s10 = skew(0.1), skew(0.5), skew(1.0)
    assert s01 > s05 > s10, (s01, s05, s10)
