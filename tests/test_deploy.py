"""Flower's deployment engine for real: a SuperLink and one SuperNode per site folder as processes on
127.0.0.1, on real records split by site; plus SecAgg+ against plain FedAvg.

Each node reads only its own folder (links to one source of ``../shared/data``), at most a few records
of each site, with a tiny model: the tests check the mechanics (who took part, faults, resume, bytes),
not accuracy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from federated import deploy
from federated.checkpoint import load_checkpoint

TINY = ["--model-kwargs", json.dumps({"widths": [8, 16, 24, 32]}), "--max-per-site", "16", "--workers", "0"]


@pytest.fixture(scope="module")
def sites(data_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """Three hospitals: CPSC2018, the CinC 2021 sample (Georgia, Chapman/Ningbo...), the original CPSC2018 files."""
    root = tmp_path_factory.mktemp("sites")
    out = {}
    for name, source in (("a", "cpsc2018"), ("b", "cinc2021"), ("c", "cpsc2018_original")):
        (root / name).mkdir()
        (root / name / source).symlink_to(data_dir / source, target_is_directory=True)
        out[name] = root / name
    (root / "empty").mkdir()
    out["empty"] = root / "empty"
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _alive_with(text: str) -> list[str]:
    """Command lines of running processes that mention ``text`` (the rehearsal must leave none)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(cmd)
    return found


def _n_float_values(ckpt) -> int:
    return sum(v.numel() for k, v in ckpt.state_dict.items() if v.is_floating_point())


def test_deployment_three_nodes_bad_folder_resume_float16(sites, cache, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--sites", str(sites["a"]), str(sites["b"]), str(sites["empty"]), "--min-nodes", "2", "--round-timeout", "120",
            "--out", str(out), "--cache-dir", str(cache), *TINY]
    assert deploy.main([*argv, "--rounds", "1"]) == 0
    for name in ("best.pt", "last.pt", "metrics.json", "history.csv", "learning_curves.png", "config.json"):
        assert (out / name).exists(), name
    m = json.loads((out / "metrics.json").read_text())
    r1 = m["rounds"][0]
    assert r1["nodes"] == "a b"
    # The node with an empty folder answers with an error naming itself and its folder; the server logs it
    # and the round goes on with the others.
    assert r1["failed"] and f"data folder {sites['empty']}: no readable 12-lead record" in r1["failed_reasons"], r1
    assert m["test"]["records"] > 0 and set(m["test_per_node"]) == {"a", "b"}
    assert 0.0 <= m["test"]["macro"]["auroc"] <= 1.0
    n_values = _n_float_values(load_checkpoint(out / "best.pt"))
    # float32 updates of two nodes: the counted payload is the weights plus a few numbers.
    assert 2 * 4 * n_values <= r1["bytes_up"] < 2 * 4 * n_values * 1.05
    assert not _alive_with(str(sites["a"])), "the rehearsal left processes running"

    # A killed SuperLink resumes from its last round: the same folder, two rounds, --resume; float16 updates.
    assert deploy.main([*argv, "--rounds", "2", "--resume", "--update-dtype", "float16"]) == 0
    m2 = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in m2["rounds"]] == [1, 2]
    assert m2["rounds"][0] == r1  # round 1 kept from the first run, not trained again
    assert 2 * 2 * n_values <= m2["rounds"][1]["bytes_up"] < 2 * 2 * n_values * 1.05, "float16 halves the bytes"
    assert load_checkpoint(out / "last.pt").progress["round"] == 2
    assert not _alive_with(str(sites["a"]))


def test_deployment_tls_node_auth_secagg_with_a_node_killed(sites, cache, tmp_path):
    out = tmp_path / "run"
    code = deploy.main([
        "--sites", str(sites["a"]), str(sites["b"]), str(sites["c"]), "--rounds", "2", "--tls", "--node-auth", "--secagg",
        "--kill-node", "2", "--kill-after-round", "1", "--min-nodes", "2", "--round-timeout", "120",
        "--out", str(out), "--cache-dir", str(cache), *TINY,
    ])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert [r["nodes"] for r in m["rounds"]] == ["a b c", "a b"]  # round 2 went on without the dead node
    assert m["bytes"]["secagg"] is True and all(r["bytes_up"] > 0 for r in m["rounds"])
    # TLS: the SuperLink ran with the test CA's certificate (it warns when started with --insecure).
    assert "Option `--insecure`" not in (out / "deploy" / "superlink.log").read_text()
    assert "root-certificates" in (out / "deploy" / "flwr-home" / "config.toml").read_text()
    # Node authentication: each SuperNode's public key was registered before it connected.
    assert (out / "deploy" / "superlink.log").read_text().count("RegisterNode] Created node_id") == 3
    assert not _alive_with(str(sites["c"]))


def test_secagg_aggregate_matches_fedavg(sites, cache, tmp_path):
    """One round on the simulation engine, same seed: SecAgg+ (masked, quantized) vs plain FedAvg."""
    common = ["--sites", str(sites["a"]), str(sites["b"]), str(sites["c"]), "--rounds", "1", "--engine", "simulation",
              "--cache-dir", str(cache), *TINY]
    assert deploy.main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert deploy.main([*common, "--out", str(tmp_path / "secagg"), "--secagg"]) == 0
    plain = load_checkpoint(tmp_path / "plain" / "last.pt")
    secure = load_checkpoint(tmp_path / "secagg" / "last.pt")
    torch.manual_seed(0)
    from resnet1d import create_model

    start = create_model(plain.model_name, **plain.model_kwargs).state_dict()
    diff = max((plain.state_dict[k] - secure.state_dict[k]).abs().max().item() for k in start if start[k].is_floating_point())
    step = max((plain.state_dict[k] - start[k]).abs().max().item() for k in start if start[k].is_floating_point())
    # SecAgg+ quantizes each node's weighted change (2**22 levels over +-8, weights = records / 1000).
    assert diff < 1e-3, diff
    assert step > 50 * diff, (step, diff)
    assert np.isclose(json.loads((tmp_path / "secagg" / "metrics.json").read_text())["test"]["records"],
                      json.loads((tmp_path / "plain" / "metrics.json").read_text())["test"]["records"])


def test_pooled_histogram_metrics_match_per_record_metrics():
    """The server's pooled figures (from summed per-node score histograms) against the exact per-record ones."""
    from federated.deployment import pooled_from_histograms
    from federated.flower_apps import score_histograms
    from federated.metrics import multilabel_metrics, tune_thresholds

    rng = np.random.default_rng(0)
    labels = ["AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC"]
    y = (rng.random((400, 6)) < 0.15).astype(int)
    probs = np.clip(0.35 * y + rng.beta(2, 5, size=y.shape), 0, 1)
    nodes = np.array_split(np.arange(400), 3)  # three nodes, each sends its own histograms
    pos = neg = 0
    for idx in nodes:
        p_, n_ = score_histograms(y[idx], probs[idx])
        pos, neg = pos + np.asarray(p_).reshape(6, -1), neg + np.asarray(n_).reshape(6, -1)
    pooled, thresholds = pooled_from_histograms(pos, neg, labels, None)
    exact = multilabel_metrics(y, probs, labels, tune_thresholds(y, probs))
    for name in labels:
        assert abs(pooled["per_class"][name]["auroc"] - exact["per_class"][name]["auroc"]) < 0.005
        assert abs(pooled["per_class"][name]["f1"] - exact["per_class"][name]["f1"]) < 0.02
        assert pooled["per_class"][name]["positives"] == exact["per_class"][name]["positives"]
    assert pooled["subset_accuracy"] is None  # needs per-record labels, which the server never gets


def test_bad_rehearsal_input_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        deploy.main(["--sites", str(tmp_path / "nowhere"), str(tmp_path), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "site folder(s) not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        deploy.main(["--sites", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "at least 2 site folders" in capsys.readouterr().err
    from federated.deployment import config_from_run

    with pytest.raises(ValueError, match="run config needs out"):
        config_from_run({"rounds": 2})
    with pytest.raises(ValueError, match="update-dtype"):
        config_from_run({"out": str(tmp_path), "update-dtype": "int8"})
