"""The training recipe (windows per record, EMA, early stopping, balanced sampling, augmentation) and
patient-level cross-validation (``--folds``), on real records with tiny widths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cpsc2018.catalog import scan
from federated.augment import augment_batch
from federated.checkpoint import load_checkpoint
from federated.data import balanced_weights
from federated.train import main as train_main

SMALL = json.dumps({"widths": [8, 8, 16, 16]})


@pytest.fixture(scope="module")
def cpsc(data_dir):
    return data_dir / "cpsc2018"


def _args(data, out, cache, *extra):
    return ["--data", str(data), "--out", str(out), "--cache-dir", str(cache), "--model-kwargs", SMALL, "--workers", "0", *extra]


def test_cross_validation_end_to_end(cpsc, tmp_path, capsys):
    out = tmp_path / "cv"
    extra = ("--folds", "3", "--epochs", "3", "--patience", "1", "--ema", "0.9", "--augment",
             "--windows-per-record", "2", "--sampler", "balanced")
    assert train_main(_args(cpsc, out, tmp_path / "cache", *extra)) == 0
    assert "3-fold CV test macro F1" in capsys.readouterr().out
    result = json.loads((out / "cv_metrics.json").read_text())
    assert result["folds"] == 3 and len(result["fold_metrics"]) == 3
    assert set(result["summary"]["per_class"]) == {"AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC"}
    assert (out / "learning_curves_folds.png").stat().st_size > 0
    keys = []
    for i in range(3):
        oof = np.load(out / f"fold{i}" / "oof.npz")
        ckpt = load_checkpoint(out / f"fold{i}" / "best.pt")
        # The checkpoint records its fold: the export gate and evaluate use the same held-out records.
        assert ckpt.split["fold"] == i and list(oof["test_keys"]) == ckpt.split["test_ids"]
        assert list(oof["val_keys"]) == ckpt.split["val_ids"]
        assert not set(ckpt.split["test_ids"]) & set(ckpt.split["val_ids"])
        keys += list(oof["test_keys"])
        assert oof["test_probs"].shape == (len(oof["test_keys"]), 6)
    n = len(scan(cpsc, progress=False).entries)
    assert sorted(keys) == sorted(set(keys)) and len(keys) == n, "test parts partition the records"
    # A finished run resumes to the same figures without training again.
    before = (out / "fold0" / "best.pt").stat().st_mtime_ns
    assert train_main(_args(cpsc, out, tmp_path / "cache", *extra, "--resume")) == 0
    assert (out / "fold0" / "best.pt").stat().st_mtime_ns == before
    assert json.loads((out / "cv_metrics.json").read_text())["summary"] == result["summary"]


def test_ema_checkpoint_holds_averaged_weights(cpsc, tmp_path):
    out = tmp_path / "ema"
    assert train_main(_args(cpsc, out, tmp_path / "cache", "--epochs", "2", "--ema", "0.5", "--seed", "2")) == 0
    last = load_checkpoint(out / "last.pt")
    raw = last.progress["raw_state_dict"]
    avg = last.state_dict
    diffs = [float((raw[k].float() - avg[k].float()).abs().max()) for k in raw if raw[k].is_floating_point()]
    assert max(diffs) > 0, "the saved weights must be the moving average, not the raw weights"


def test_early_stopping_stops(cpsc, tmp_path):
    out = tmp_path / "stop"
    # A learning rate of 0 never improves on epoch 1: patience 1 stops after epoch 2.
    assert train_main(_args(cpsc, out, tmp_path / "cache", "--epochs", "6", "--patience", "1", "--lr", "1e-12")) == 0
    rows = (out / "history.csv").read_text().splitlines()
    assert len(rows) - 1 == 2


def test_windows_per_record_multiplies_steps(cpsc, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="federated")
    out = tmp_path / "w"
    assert train_main(_args(cpsc, out, tmp_path / "cache", "--epochs", "1", "--windows-per-record", "3", "--batch-size", "8")) == 0
    line = next(r.getMessage() for r in caplog.records if "optimizer steps per epoch" in r.getMessage())
    n_train = int(line.split(": ")[1].split()[0])
    assert f"= {n_train * 3 // 8} optimizer steps" in line


def test_balanced_weights_equalise_labels():
    y = np.array([[1, 0], [0, 0], [0, 0], [0, 0], [0, 1], [0, 1], [1, 1]], dtype=float)
    w = balanced_weights(y)
    assert w.sum() == pytest.approx(1.0)
    # Each label (and "no label") gets about the same total weight; the rarest label decides a record.
    assert w[0] == pytest.approx(w[6]) and w[0] > w[4]
    assert w[1:4].sum() == pytest.approx(w[0] + w[6])  # the 3 label-free records weigh as much as label 0's 2


def test_bad_recipe_flags_are_clear_errors(cpsc, tmp_path, capsys):
    for flags, msg in (
        (("--ema", "1.5"), "--ema"),
        (("--folds", "1"), "--folds"),
        (("--windows-per-record", "0"), "--windows_per_record"),
        (("--folds", "3", "--mode", "federated"), "--mode central"),
    ):
        with pytest.raises(SystemExit):
            train_main(_args(cpsc, tmp_path / "x", tmp_path / "cache", *flags))
        assert msg.replace("_", "-") in capsys.readouterr().err.replace("_", "-")


def test_augmentation_keeps_shape_and_is_seeded():
    x = torch.randn(4, 12, 2500)
    a = augment_batch(x, torch.Generator().manual_seed(1), 250.0)
    b = augment_batch(x, torch.Generator().manual_seed(1), 250.0)
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
    # Many draws: some window loses one lead entirely (lead dropout), none loses two.
    z = augment_batch(torch.ones(200, 12, 500) + 5, torch.Generator().manual_seed(0), 250.0)
    flat = (z.abs().amax(dim=-1) == 0).sum(dim=1)
    assert flat.max() == 1 and 5 <= int((flat == 1).sum()) <= 40


def test_sample_per_site_caps_each_site(data_dir):
    from collections import Counter

    from federated.data import sample_per_site

    entries = scan(data_dir / "cinc2021", progress=False).entries
    full = Counter(e.site for e in entries)
    got = sample_per_site(entries, 10, seed=0)
    sizes = Counter(e.site for e in got)
    assert sizes == {site: min(n, 10) for site, n in full.items()}
    assert [e.key for e in got] == [e.key for e in sample_per_site(entries, 10, seed=0)]
