"""Heartbeats (issue 18): AAMI mapping, segmentation of real MIT-BIH records, patient folds, and one beat model
trained, exported to int8 and evaluated end to end on a few real records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cpsc2018.beats import DS1, BeatConfig, load_record_beats, patient_folds, patient_of, rr_features
from cpsc2018.labels import AAMI, AAMI_SYMBOLS, aami_class, label_names

# A few records with the common classes: 100 (N, S), 106 (V), 118 (S, V), 119 (V), 209 (S).
FEW = ("100", "106", "118", "119", "209")


def test_aami_mapping():
    assert label_names("aami") == AAMI == ("N", "S", "V", "F", "Q")
    expected = {"N": "NLRej", "S": "AaJS", "V": "VE", "F": "F", "Q": "/fQ"}
    for cls, symbols in expected.items():
        assert AAMI_SYMBOLS[cls] == tuple(symbols)
        for s in symbols:
            assert aami_class(s) == cls
    for non_beat in ("+", "~", "|", "x", '"', "!", "[", "]", "p", "t", "u", "Z"):
        assert aami_class(non_beat) is None


def test_record_100_segmentation(data_dir: Path):
    cfg = BeatConfig(n_leads=2)
    b = load_record_beats(data_dir / "mitbih" / "100.hea", cfg)
    assert len(b) == 2273
    assert b.counts() == {"N": 2239, "S": 33, "V": 1, "F": 0, "Q": 0}
    # MLII, V5, then each minus the record's median beat (cfg.template == "diff").
    assert b.windows.shape == (2273, cfg.channels, cfg.window_samples) == (2273, 4, 126)
    assert b.leads == ("MLII", "V5")
    assert np.allclose(b.windows[:, 2:], b.windows[:, :2] - np.median(b.windows[:, :2], axis=0), atol=1e-5)
    assert b.rr.shape == (2273, 7) and np.isfinite(b.rr).all()
    # The annotated R peak sits at index `before` of every window: the average MLII beat peaks there.
    mean_beat = b.windows[b.labels == 0, 0].mean(axis=0)
    assert abs(int(np.argmax(mean_beat)) - cfg.before) <= 2
    # The S beats of record 100 are premature: shorter previous interval than their local average.
    s = b.labels == AAMI.index("S")
    assert np.median(b.rr[s, 4]) < 0.9 < np.median(b.rr[b.labels == 0, 4])


def test_record_114_reads_mlii_first(data_dir: Path):
    b = load_record_beats(data_dir / "mitbih" / "114.hea", BeatConfig(n_leads=1, template="none"))
    assert b.leads == ("MLII",) and b.windows.shape[1] == 1
    two = load_record_beats(data_dir / "mitbih" / "114.hea", BeatConfig(n_leads=2))
    assert two.leads == ("MLII", "V5")  # stored V5 first
    assert np.allclose(two.windows[:, 0], b.windows[:, 0])


def test_rr_features_of_a_premature_beat():
    t = np.arange(12) * 0.8
    t[6] -= 0.3  # beat 6 comes 300 ms early: short before, long after (compensatory pause)
    f = rr_features(t, 10)
    assert f[6, 0] == pytest.approx(0.5) and f[6, 1] == pytest.approx(1.1)
    assert f[6, 4] < 0.7 and f[6, 5] > 2.0
    assert rr_features(np.array([1.0]), 10).shape == (1, 7)


def test_folds_keep_records_and_patients_apart(data_dir: Path):
    from federated.beats.data import load_beat_data

    data = load_beat_data(data_dir / "mitbih", progress=False, only=list(DS1))
    counts = data.counts()
    folds = patient_folds(counts, 5, seed=0)
    flat = [r for f in folds for r in f]
    assert sorted(flat) == sorted(DS1) and len(flat) == len(set(flat))  # every record once
    # Every fold holds V beats; S beats spread beyond one fold.
    per_fold = [np.sum([counts[r] for r in f], axis=0) for f in folds]
    assert all(p[AAMI.index("V")] > 0 for p in per_fold)
    assert sum(p[AAMI.index("S")] > 0 for p in per_fold) >= 4
    # 201 and 202 are one patient: with 202 present they always share a fold.
    with_202 = {**counts, "202": np.array([2000, 50, 20, 1, 0])}
    assert patient_of("202") == patient_of("201")
    for seed in range(5):
        f = patient_folds(with_202, 5, seed=seed)
        assert [("201" in x) for x in f] == [("202" in x) for x in f]
        assert len({p for x in f for p in {patient_of(r) for r in x}}) == len({patient_of(r) for r in with_202})
    with pytest.raises(ValueError, match="patients cannot fill"):
        patient_folds({"101": np.ones(5)}, 2)


@pytest.fixture(scope="module")
def few_records(data_dir: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("few-mitbih")
    for r in FEW:
        for ext in (".hea", ".dat", ".atr"):
            (root / f"{r}{ext}").symlink_to(data_dir / "mitbih" / f"{r}{ext}")
    return root


def test_train_export_evaluate(few_records: Path, tmp_path: Path):
    from export.__main__ import run_export
    from federated.evaluate import main as evaluate_main
    from federated.train import main as train_main

    out = tmp_path / "run"
    rc = train_main(["--task", "beats", "--data", str(few_records), "--epochs", "3", "--batch-size", "128",
                     "--lr", "3e-3", "--workers", "0", "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # The validation records are whole patients that the model never trained on.
    assert metrics["val_records"] and not set(metrics["val_records"]) & set(metrics["train_records"])
    # The agreement is what this test holds int8 to. A 3-epoch model's macro AUROC over five classes, with
    # a handful of F and Q beats, moves by about 0.01 with one beat (0.0093 was seen here against the product
    # gate's 0.01), so the AUROC limit is loosened for this tiny model only; the product default stays 0.01.
    report = run_export(out / "best.pt", few_records, tmp_path / "export", repeats=3, max_auroc_drop=0.03, log=lambda *_: None)
    print(f"beatnet int8 vs fp32: top-1 agreement {100 * report['gate']['agreement']:.2f} % on "
          f"{report['validation_records']} validation beats, macro AUROC drop {report['gate']['auroc_drop']:+.4f}")
    assert report["gate"]["passed"] and report["gate"]["agreement"] >= 0.97
    from export.metadata import read_onnx_metadata

    meta = read_onnx_metadata(str(tmp_path / "export" / "model.int8.onnx"))
    assert meta.label_set == "aami" and meta.labels == list(AAMI) and len(meta.features) == 7
    assert BeatConfig.from_dict(meta.preprocess) == BeatConfig()
    for model_file in (out / "best.pt", tmp_path / "export" / "model.int8.onnx"):
        js = tmp_path / f"{model_file.name}.json"
        assert evaluate_main(["--model-file", str(model_file), "--data", str(few_records), "--json", str(js)]) == 0
        r = json.loads(js.read_text())
        assert r["task"] == "beats" and r["beats"] == sum(load_record_beats(few_records / f"{n}.hea").labels.size for n in FEW)
        assert set(r["per_class"]) == set(AAMI)
        for c in AAMI:
            assert {"sensitivity", "ppv", "f1"} <= set(r["per_class"][c])
        assert "f1" in r["macro"] and 0 <= r["macro"]["f1"] <= 1
        cm = np.array(r["confusion"])
        assert cm.shape == (5, 5) and cm.sum() == r["beats"]
        assert r["per_class"]["N"]["sensitivity"] == pytest.approx(cm[0, 0] / cm[0].sum())
        assert set(r["seen_in_training"]) == set(FEW)  # said in the report: these records were trained on


def test_evaluate_folder_without_beats_is_one_line_error(tmp_path: Path, few_records: Path, capsys):
    from federated.evaluate import main as evaluate_main

    (tmp_path / "empty").mkdir()
    # Any beat checkpoint will do: build one quickly without training.
    from federated.beats.data import load_beat_data
    from federated.beats.train import beat_model_kwargs, make_beat_checkpoint
    from federated.checkpoint import save_checkpoint
    from federated.config import TrainConfig
    from resnet1d import create_model

    cfg = TrainConfig(task="beats")
    data = load_beat_data(few_records, progress=False, only=["100"])
    kw = beat_model_kwargs(cfg, data.cfg)
    fit = {"model": create_model("beatnet", **kw), "model_name": "beatnet", "kwargs": kw, "best_epoch": 0, "history": []}
    save_checkpoint(tmp_path / "m.pt", make_beat_checkpoint(cfg, data, fit, {"train_records": ["100"], "val_records": []}, {}))
    assert evaluate_main(["--model-file", str(tmp_path / "m.pt"), "--data", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no beat-annotated record" in err[0] and "empty" in err[0]


@pytest.mark.parametrize("name", ["beatnet", "rnn_attention"])
def test_beat_models_take_rr_features_and_export(name: str, few_records: Path, tmp_path: Path):
    """Both registry models for beats: five classes, the beat channels, the RR head; the ONNX graph
    (softmax, inputs ecg + features) matches torch on real beats."""
    import torch

    from export.onnx_export import export_fp32
    from export.runtime import OnnxPredictor
    from federated.beats.data import load_beat_data
    from federated.beats.train import beat_model_kwargs, make_beat_checkpoint
    from federated.config import TrainConfig
    from resnet1d import create_model

    cfg = TrainConfig(task="beats", model=name)
    data = load_beat_data(few_records, progress=False, only=["119"])
    kw = beat_model_kwargs(cfg, data.cfg)
    assert kw["num_classes"] == 5 and kw["in_leads"] == data.cfg.channels and kw["num_features"] == 7
    torch.manual_seed(0)
    model = create_model(name, **kw).eval()
    fit = {"model": model, "model_name": name, "kwargs": kw, "best_epoch": 0, "history": []}
    ckpt = make_beat_checkpoint(cfg, data, fit, {"train_records": ["119"], "val_records": []}, {})
    wrapped = export_fp32(ckpt, tmp_path / "m.onnx", data.cfg.window_samples)
    rb = data.records["119"]
    x, rr = rb.windows[:64], rb.rr[:64]
    with torch.no_grad():
        ref = wrapped(torch.from_numpy(x), torch.from_numpy(rr)).numpy()
    got = OnnxPredictor(str(tmp_path / "m.onnx")).predict_windows(x, features=rr)
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)  # softmax over the five AAMI classes
    assert np.abs(ref - got).max() < 1e-4
