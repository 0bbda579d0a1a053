"""Differential privacy (federated/privacy.py) on real records: DP-SGD in a client's real training loop,
the accounting, the budget stop, the GroupNorm choice, central mode and server-side DP."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import ConfigRecord

from federated.config import TrainConfig, parse_config
from federated.flower_apps import NodeData, to_arrays, train_local_with_metrics
from federated.privacy import BudgetExhausted, central_dp_epsilon, noise_for_budget, private_model_kwargs, spent_epsilon

TINY = {"widths": [4, 8, 8, 8], "norm_layer": "group"}


@pytest.fixture(scope="module")
def exp(small_data, tmp_path_factory):
    from federated.data import prepare

    cfg = TrainConfig(data=str(small_data), seed=0, max_per_site=12, cache_dir=str(tmp_path_factory.mktemp("cache")), workers=0)
    return prepare(cfg, progress=False)


@pytest.fixture(scope="module")
def node(exp):
    train = exp.split["train"][:40]
    return NodeData("site", 0, train, exp.split["val"], [], exp.cache, exp.targets)


def _config(round_: int, dp: bool, dp_rounds: int = 3, epsilon: float = 5.0) -> ConfigRecord:
    c = {
        "model": "resnet1d18", "model-kwargs": json.dumps(TINY), "seed": 0, "server-round": round_, "lr": 1e-2,
        "weight-decay": 0.0, "batch-size": 8, "local-epochs": 1, "pos-weight-cap": 20.0, "threads": 1,
    }
    if dp:
        c.update({"dp": "local", "epsilon": epsilon, "delta": 1e-5, "max-grad-norm": 1.0, "dp-rounds": dp_rounds})
    return ConfigRecord(c)


def _init_arrays():
    import torch

    from resnet1d import create_model

    torch.manual_seed(0)
    return to_arrays(create_model("resnet1d18", **TINY))


def _flat(arrays) -> np.ndarray:
    return np.concatenate([a.numpy().ravel() for a in arrays.values()])


def test_dp_epsilon_finite_grows_with_rounds_and_changes_the_update(node):
    g = _init_arrays()
    w1, _, m1 = train_local_with_metrics(node, _config(1, True), g)
    _, _, m2 = train_local_with_metrics(node, _config(2, True), g)
    assert 0 < m1["dp-epsilon"] < m2["dp-epsilon"] <= 5.0 + 1e-6 and math.isfinite(m2["dp-epsilon"])
    assert m1["dp-delta"] == 1e-5 and m1["dp-noise-multiplier"] > 0
    plain_a, _, extra = train_local_with_metrics(node, _config(1, False), g)
    plain_b, _, _ = train_local_with_metrics(node, _config(1, False), g)
    assert extra == {}
    # Without DP the same seed gives the same update bit for bit, so the difference is the DP step's.
    np.testing.assert_array_equal(_flat(plain_a), _flat(plain_b))
    diff = np.abs(_flat(w1) - _flat(plain_a)).max()
    assert diff > 1e-3, diff


def test_client_stops_before_exceeding_its_budget(node):
    g = _init_arrays()
    _, _, m = train_local_with_metrics(node, _config(3, True, dp_rounds=3), g)  # the last planned round: allowed
    assert m["dp-epsilon"] <= 5.0
    with pytest.raises(BudgetExhausted, match="budget 5"):
        train_local_with_metrics(node, _config(4, True, dp_rounds=3), g)


def test_budget_exhausted_is_an_error_reply_of_the_client_app(node, exp, tmp_path):
    """Through the ClientApp: no update leaves the node, the strategy sees an error with the reason."""
    from flwr.app import Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from federated.flower_apps import app
    from federated.plan import ClientPlan, write_plan

    plan = write_plan(tmp_path, exp.cache, exp.targets, [ClientPlan("site", node.train, node.val)])
    c = _config(4, True, dp_rounds=3)
    c["plan"] = str(plan)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 0, 0, 0
    msg = Message(RecordDict({"arrays": _init_arrays(), "config": c}), dst_node_id=1, message_type="train")
    reply = app(msg, Context(run_id=0, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={}))
    assert reply.has_error() and "would spend epsilon" in reply.error.reason


def test_accounting_matches_opacus_and_calibration():
    z = noise_for_budget(3.0, 1e-5, 0.1, 200)
    assert 2.9 < spent_epsilon(z, 0.1, 200, 1e-5) <= 3.0
    assert spent_epsilon(z, 0.1, 100, 1e-5) < spent_epsilon(z, 0.1, 200, 1e-5)
    assert spent_epsilon(0.0, 0.1, 10, 1e-5) == math.inf
    # Server-side DP: more rounds spend more, more noise spends less.
    assert central_dp_epsilon(1.0, 2, 1e-5) < central_dp_epsilon(1.0, 4, 1e-5) < math.inf
    assert central_dp_epsilon(2.0, 4, 1e-5) < central_dp_epsilon(1.0, 4, 1e-5)


def test_group_norm_chosen_and_unprivatisable_model_refused():
    assert private_model_kwargs("resnet1d18", {"widths": [8, 8, 8, 8]})["norm_layer"] == "group"
    with pytest.raises(ValueError, match="rnn_attention cannot be made private.*GRU"):
        private_model_kwargs("rnn_attention", {})
    with pytest.raises(ValueError, match="needs GroupNorm"):
        private_model_kwargs("resnet1d18", {"norm_layer": "batch"})


def test_dp_flag_combinations_refused(capsys):
    for argv, msg in (
        (["--mode", "local", "--dp", "local"], "--dp local runs in --mode central"),
        (["--mode", "central", "--dp", "central"], "--dp central noises the federated aggregate"),
        (["--mode", "federated", "--dp", "central", "--strategy", "krum"], "accounted for averaging strategies"),
        (["--mode", "federated", "--dp", "local", "--strategy", "fedprox"], "escapes per-sample clipping"),
    ):
        with pytest.raises(SystemExit):
            parse_config(argv)
        assert msg in capsys.readouterr().err


def test_central_mode_dp_sgd_end_to_end(small_data, tmp_path):
    from federated.train import main

    out = tmp_path / "run"
    argv = [
        "--data", str(small_data), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--workers", "0",
        "--max-per-site", "8", "--model-kwargs", json.dumps({"widths": [4, 8, 8, 8]}), "--epochs", "2",
        "--mode", "central", "--dp", "local", "--epsilon", "4", "--batch-size", "8",
    ]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["privacy"]["dp"] == "local" and 0 < m["privacy"]["spent"] <= 4.0
    assert json.loads((out / "config.json").read_text())["model_kwargs"]["norm_layer"] == "group"
    hist = (out / "history.csv").read_text().splitlines()
    col = hist[0].split(",").index("dp_epsilon")
    eps = [float(r.split(",")[col]) for r in hist[1:]]
    assert eps[0] < eps[1] <= 4.0


def test_server_side_dp_wraps_an_averaging_strategy_with_equal_weights():
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping, DifferentialPrivacyServerSideFixedClipping

    from federated.privacy import UNIT_WEIGHT_KEY
    from federated.simulation import build_strategy

    cfg = TrainConfig(mode="federated", dp="central", noise_multiplier=1.2, clipping_norm=0.5)
    s = build_strategy("fedavg", 4, 0.0, None, None, cfg=cfg)
    assert isinstance(s, DifferentialPrivacyServerSideFixedClipping) and s.noise_multiplier == 1.2 and s.clipping_norm == 0.5
    assert s.strategy.weighted_by_key == UNIT_WEIGHT_KEY
    cfg.adaptive_clipping = True
    assert isinstance(build_strategy("fedadam", 4, 0.0, None, None, cfg=cfg), DifferentialPrivacyServerSideAdaptiveClipping)
