"""Data options (the PTB-XL sampling rate) travel with the model: evaluate, the export gate and the
app read the records at the rate the model was trained on, not at the scanner's default."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

import cpsc2018.catalog as catalog_mod
import export.gate as gate_mod
import federated.evaluate as evaluate_mod
from export.metadata import ModelMeta
from export.onnx_export import meta_from_checkpoint
from federated.checkpoint import Checkpoint, load_checkpoint
from federated.metrics import multilabel_metrics
from federated.train import main as train_main

SMALL = json.dumps({"widths": [8, 16, 24, 32]})
N_RECORDS = 40  # enough for a patient split with a few test records; small enough to train in seconds


@pytest.fixture(scope="module")
def ptbxl_subset(data_dir, tmp_path_factory):
    """A PTB-XL root of links: its table and the first N_RECORDS recordings at both rates."""
    src = data_dir / "ptbxl"
    root = tmp_path_factory.mktemp("ptbxl_subset") / "ptbxl"
    root.mkdir()
    os.symlink(src / "ptbxl_database.csv", root / "ptbxl_database.csv")
    lr = sorted((src / "records100" / "00000").glob("*_lr.hea"))[:N_RECORDS]
    for hea in lr:
        for rate, suffix in (("records100", "_lr"), ("records500", "_hr")):
            stem = hea.name[: -len("_lr.hea")] + suffix
            (root / rate / "00000").mkdir(parents=True, exist_ok=True)
            for ext in (".hea", ".dat"):
                os.symlink(src / rate / "00000" / (stem + ext), root / rate / "00000" / (stem + ext))
    return root


@pytest.fixture(scope="module")
def trained_100hz(ptbxl_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run100")
    cache = tmp_path_factory.mktemp("cache100")
    args = [
        "--data", str(ptbxl_subset), "--out", str(out), "--cache-dir", str(cache), "--model-kwargs", SMALL,
        "--workers", "0", "--epochs", "1", "--ptbxl-rate", "100",
    ]
    assert train_main(args) == 0
    return out / "best.pt"


def _spy_scan(monkeypatch, module) -> list[int]:
    """Record the ptbxl_rate of every scan ``module`` makes (the default when none is given)."""
    rates: list[int] = []
    real = catalog_mod.scan

    def spy(root, *, ptbxl_rate: int = 500, progress: bool = True):
        rates.append(ptbxl_rate)
        return real(root, ptbxl_rate=ptbxl_rate, progress=progress)

    monkeypatch.setattr(module, "scan", spy)
    return rates


def test_checkpoint_records_the_ptbxl_rate(trained_100hz):
    ckpt = load_checkpoint(trained_100hz)
    assert ckpt.data_options == {"ptbxl_rate": 100}
    assert ckpt.split["data_options"] == {"ptbxl_rate": 100}


def test_evaluate_reads_ptbxl_at_the_trained_rate(trained_100hz, ptbxl_subset, monkeypatch):
    rates = _spy_scan(monkeypatch, evaluate_mod)
    seen = {}
    real_probs = evaluate_mod.record_probabilities

    def capture(model, entries, *a, **kw):
        seen["out"] = real_probs(model, entries, *a, **kw)
        return seen["out"]

    monkeypatch.setattr(evaluate_mod, "record_probabilities", capture)
    result = evaluate_mod.evaluate_model(trained_100hz, ptbxl_subset, split="test")
    # The probabilities are those of the records read at 100 Hz.
    model = evaluate_mod.load_model(trained_100hz)
    test_ids = set(model.split["test_ids"])
    entries = [e for e in catalog_mod.scan(ptbxl_subset, ptbxl_rate=100, progress=False).entries if e.key in test_ids]
    assert entries and all(e.fs == 100 for e in entries)
    probs, kept, _ = real_probs(model, entries)
    assert [e.key for e in seen["out"][1]] == [e.key for e in kept]
    np.testing.assert_allclose(seen["out"][0], probs, rtol=0, atol=1e-6)
    assert rates == [100]
    y = np.array([e.targets(model.label_set) for e in kept])
    expected = multilabel_metrics(y, probs, model.labels, model.thresholds)
    assert result["records"] == len(kept)
    assert result["macro"]["auroc"] == pytest.approx(expected["macro"]["auroc"], nan_ok=True)
    assert result["hamming_loss"] == pytest.approx(expected["hamming_loss"])
    # and evaluate says which rate it read in each PTB-XL folder
    assert result["ptbxl_rates_read"] == {str(ptbxl_subset): {"100": len(entries)}}
    assert "read at 100 Hz" in evaluate_mod.format_report(result)


def test_export_gate_reads_ptbxl_at_the_trained_rate(trained_100hz, ptbxl_subset, monkeypatch):
    rates = _spy_scan(monkeypatch, gate_mod)
    data = gate_mod.gather(load_checkpoint(trained_100hz), ptbxl_subset, calibration_records=4)
    assert rates == [100]
    assert "100 Hz" in data.note


def test_onnx_metadata_carries_the_data_options(trained_100hz):
    meta = meta_from_checkpoint(load_checkpoint(trained_100hz))
    back = ModelMeta.from_props(meta.to_props())
    assert back.data_options == {"ptbxl_rate": 100}


def test_old_files_without_data_options_load_with_documented_defaults():
    base = dict(model_name="resnet1d18", model_kwargs={}, state_dict={}, label_set="six", labels=[], preprocess={}, thresholds=[])
    # Checkpoints saved before data_options: the training config's rate, else 500 Hz (what was always read).
    assert Checkpoint(**base, config={"ptbxl_rate": 100}, split={"seed": 0}).data_options == {"ptbxl_rate": 100}
    assert Checkpoint(**base, split={"seed": 0}).data_options == {"ptbxl_rate": 500}
    props = ModelMeta("m", {}, ["AF"], "six", [0.5], {}).to_props()
    assert ModelMeta.from_props(props).data_options == {"ptbxl_rate": 500}


def test_app_held_out_scan_uses_the_model_rate(ptbxl_subset, monkeypatch):
    from mobile_app.classify import held_out_record
    from mobile_app.inference import ClassifyError

    rates = _spy_scan(monkeypatch, catalog_mod)
    meta = ModelMeta("m", {}, ["AF"], "six", [0.5], {}, split={"test_ids": ["x"], "data_options": {"ptbxl_rate": 100}})
    with pytest.raises(ClassifyError):
        held_out_record(SimpleNamespace(meta=meta), ptbxl_subset)
    assert rates == [100]
