"""The training command end to end on real records: central, federated (Flower simulation), resume
after a kill, evaluate, and clear errors for bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federated.checkpoint import load_checkpoint
from federated.evaluate import main as evaluate_main
from federated.train import main as train_main

REPO = Path(__file__).resolve().parents[1]
# Small widths keep a CPU epoch over the ~460 training records to a few seconds.
SMALL = json.dumps({"widths": [8, 16, 24, 32]})
RUN_FILES = ("best.pt", "last.pt", "metrics.json", "history.csv", "config.json", "learning_curves.png", "roc_pr.png", "confusion.png")


def _args(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--cache-dir", str(cache), "--model-kwargs", SMALL, "--workers", "0", *extra]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def central_run(small_data, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("central")
    assert train_main(_args(small_data, out, cache_dir, "--mode", "central", "--epochs", "1")) == 0
    return out


def test_central_one_epoch_writes_every_file(central_run):
    for name in RUN_FILES:
        assert (central_run / name).stat().st_size > 0, name
    ckpt = load_checkpoint(central_run / "best.pt")
    assert ckpt.labels == ["AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC"]
    assert len(ckpt.thresholds) == 6 and all(0 < t < 1 for t in ckpt.thresholds)
    assert ckpt.preprocess["fs"] == 250.0
    assert ckpt.split["test_ids"] and ckpt.split["seed"] == 0
    assert set(ckpt.metrics) == {"val", "test"}
    assert ckpt.versions["torch"].startswith("2.13")
    metrics = json.loads((central_run / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and "f1" in metrics["test"]["macro"]


def test_evaluate_checkpoint_json(central_run, small_data, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert evaluate_main(["--model-file", str(central_run / "best.pt"), "--data", str(small_data), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["per_class"]) == {"AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC"}
    assert {"f1", "auroc", "sensitivity", "specificity", "precision", "auprc"} <= set(r["macro"])
    ckpt = load_checkpoint(central_run / "best.pt")
    assert r["records"] == len(ckpt.split["test_ids"])
    # evaluate recomputes from the records what training measured on the same held-out split
    assert r["macro"]["auroc"] == pytest.approx(ckpt.metrics["test"]["macro"]["auroc"], abs=1e-3)
    assert "macro" in capsys.readouterr().out


def test_evaluate_rejects_wrong_checkpoint(tmp_path, small_data, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    assert evaluate_main(["--model-file", str(bad), "--data", str(small_data)]) == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and "not a readable checkpoint" in err


def test_train_rejects_folder_without_records(tmp_path, cache_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no ECG here")
    assert train_main(_args(empty, tmp_path / "out", cache_dir, "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert "no readable 12-lead record" in err and str(empty) in err
    assert train_main(_args(tmp_path / "missing", tmp_path / "out", cache_dir)) == 2
    assert "does not exist" in capsys.readouterr().err


def test_federated_two_rounds_three_clients(small_data, cache_dir, tmp_path):
    out = tmp_path / "fed"
    code = train_main(_args(small_data, out, cache_dir, "--mode", "federated", "--rounds", "2", "--clients", "3"))
    assert code == 0
    for name in RUN_FILES:
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["partition"]["clients"]) == 3
    assert len(metrics["clients"]) == 3  # per-client validation metrics of the last round
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("round") and len(history) == 3


def test_resume_after_kill_matches_uninterrupted(small_data, cache_dir, tmp_path):
    """Kill a 3-epoch run after its first epoch, resume it, compare with a run never interrupted."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--mode", "central", "--epochs", "3", "--seed", "3"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "federated.train", *_args(small_data, killed, cache_dir, *args)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(killed / "last.pt").progress["epoch"]
    assert done < 3, "the run finished before it could be killed; the test proves nothing"
    assert train_main(_args(small_data, killed, cache_dir, *args, "--resume")) == 0
    straight = tmp_path / "straight"
    assert train_main(_args(small_data, straight, cache_dir, *args)) == 0
    a = (killed / "history.csv").read_text().splitlines()
    b = (straight / "history.csv").read_text().splitlines()
    assert len(a) == len(b) == 4
    for ra, rb in zip(a[1:], b[1:]):
        va = [float(x) for x in ra.split(",")]
        vb = [float(x) for x in rb.split(",")]
        assert va == pytest.approx(vb, rel=1e-4, abs=1e-5)


def test_hybrid_with_hand_features(small_data, cache_dir, tmp_path):
    out = tmp_path / "hybrid"
    assert train_main(_args(small_data, out, cache_dir, "--epochs", "1", "--features")) == 0
    ckpt = load_checkpoint(out / "best.pt")
    from cpsc2018.features import FEATURE_NAMES

    assert ckpt.features == list(FEATURE_NAMES) and ckpt.model_kwargs["num_features"] == len(FEATURE_NAMES)
    assert evaluate_main(["--model-file", str(out / "best.pt"), "--data", str(small_data)]) == 0


def test_cpsc9_labels_and_official_score(small_data, cache_dir, tmp_path):
    out = tmp_path / "c9"
    assert train_main(_args(small_data, out, cache_dir, "--epochs", "1", "--labels", "cpsc9")) == 0
    assert len(load_checkpoint(out / "best.pt").labels) == 9
    js = tmp_path / "c9.json"
    assert evaluate_main(["--model-file", str(out / "best.pt"), "--data", str(small_data), "--json", str(js)]) == 0
    score = json.loads(js.read_text())["cpsc2018"]
    assert {"F1", "Faf", "Fblock", "Fpc", "Fst", "f1_per_class"} <= set(score)


def test_local_mode_one_model_per_site(small_data, cache_dir, tmp_path):
    out = tmp_path / "local"
    assert train_main(_args(small_data, out, cache_dir, "--mode", "local", "--epochs", "1")) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["sites"]) == {"PTB-XL", "CPSC2018", "Chapman/Ningbo", "Georgia", "other"}
    for site in summary["sites"]:
        assert (out / "local" / site.replace("/", "-") / "best.pt").exists()


def test_selection_falls_back_to_loss_without_auroc():
    from federated.central import selection_score

    assert selection_score({"macro": {"auroc": 0.8}}, 0.3) == 0.8
    assert selection_score({"macro": {"auroc": float("nan")}}, 0.3) == -0.3
