"""Export on real records: fp32 parity for every model, int8 gate, metadata, bad inputs, atomicity."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

from cpsc2018.preprocess import PreprocessConfig
from export.__main__ import main as export_main
from export.gate import gather
from export.metadata import ModelMeta, read_onnx_metadata
from export.onnx_export import export_fp32, parity
from federated.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from federated.train import main as train_main
from resnet1d import create_model, list_models
from tests.test_models import SMALL

LABELS = ["AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC"]


def _checkpoint(name: str, **extra) -> Checkpoint:
    kwargs = {"num_classes": 6, "in_leads": 12, **SMALL[name]}
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    return Checkpoint(
        model_name=name, model_kwargs=kwargs, state_dict=model.state_dict(), label_set="six", labels=LABELS,
        preprocess=PreprocessConfig().to_dict(), thresholds=[0.5] * 6, split={"seed": 0, "test_ids": []}, **extra,
    )


@pytest.fixture(scope="module")
def real_windows(small_data):
    from cpsc2018.catalog import load, scan
    from cpsc2018.preprocess import preprocess, windows

    entries = [e for e in scan(small_data / "cpsc2018", progress=False).entries][:4]
    pre = PreprocessConfig()
    return np.concatenate([windows(preprocess(load(e).signal, e.fs, pre), pre, 2) for e in entries])


@pytest.mark.parametrize("name", list_models())
def test_fp32_export_parity_every_model(name, tmp_path, real_windows):
    ckpt = _checkpoint(name)
    wrapped = export_fp32(ckpt, tmp_path / "m.onnx", window=2500)
    assert parity(wrapped, tmp_path / "m.onnx", real_windows) <= 1e-4
    meta = read_onnx_metadata(str(tmp_path / "m.onnx"))
    assert meta.model_name == name and meta.labels == LABELS


@pytest.fixture(scope="module")
def trained(small_data, tmp_path_factory):
    """A briefly trained resnet1d18 (central, 8 epochs of 2 windows per record, default widths) on the fixed
    small subset. A model trained less, or a narrower one, puts every probability near its threshold,
    where int8 rounding flips decisions (seen: 94.6 % agreement at widths 8-32 after 3 epochs; 96.5 % after
    5 epochs of one window on this subset)."""
    out = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    code = train_main([
        "--data", str(small_data), "--out", str(out), "--cache-dir", str(cache), "--epochs", "8", "--windows-per-record", "2", "--workers", "0",
    ])
    assert code == 0
    return out / "best.pt"


@pytest.fixture(scope="module")
def export_run(trained, small_data, tmp_path_factory):
    """The export, watched: which records' probabilities reached each gate decision (``judge``)."""
    import export.__main__ as export_mod

    out = tmp_path_factory.mktemp("export")
    keys_of: dict[int, list[str]] = {}
    alive, judged = [], []
    real_probs, real_judge = export_mod.record_probs, export_mod.judge

    def probs(predictor, records):
        p = real_probs(predictor, records)
        keys_of[id(p)] = list(records.keys)
        alive.append(p)  # keep ids unique while the export runs
        return p

    def judge(p32, p8, *args, **kwargs):
        judged.append((keys_of.get(id(p32)), keys_of.get(id(p8))))
        return real_judge(p32, p8, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export_mod, "record_probs", probs)
        mp.setattr(export_mod, "judge", judge)
        assert export_main(["--checkpoint", str(trained), "--calibration-data", str(small_data), "--out", str(out), "--repeats", "5"]) == 0
    return SimpleNamespace(out=out, judged=judged)


@pytest.fixture(scope="module")
def exported(export_run):
    return export_run.out


def test_gate_decides_on_validation_records_and_reports_test_beside(export_run, trained):
    ckpt = load_checkpoint(trained)
    val, test = set(ckpt.split["val_ids"]), set(ckpt.split["test_ids"])
    assert export_run.judged, "the gate judged nothing"
    for k32, k8 in export_run.judged:  # every recipe was chosen or refused on validation records only
        assert k32 is not None and set(k32) == val and set(k8) == val
        assert not set(k32) & test
    report = json.loads((export_run.out / "report.json").read_text())
    assert report["decided_on"] == "validation"
    assert report["validation_records"] == len(val) and report["test_records"] == len(test)
    assert {"agreement", "auroc_drop", "f1_drop"} <= set(report["test"])
    md = (export_run.out / "report.md").read_text()
    assert "validation (gate)" in md and "test (reported only)" in md


def test_int8_export_passes_gate_and_writes_everything(exported):
    for name in ("model.onnx", "model.int8.onnx", "report.json", "report.md"):
        assert (exported / name).stat().st_size > 0
    report = json.loads((exported / "report.json").read_text())
    assert report["gate"]["passed"]
    assert report["gate"]["agreement"] >= 0.97 and report["gate"]["auroc_drop"] <= 0.01
    assert report["parity"]["max_abs_diff"] <= 1e-4
    assert report["sizes_mb"]["int8"] < report["sizes_mb"]["fp32"]
    graph = onnx.load(str(exported / "model.int8.onnx")).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # static QDQ, not a copy of fp32
    assert report["latency_cpu"]["cpu_class"] == report["gate_machine"]["cpu_class"] == report["machine"]["cpu_class"]


def test_metadata_equals_checkpoint(exported, trained):
    ckpt = load_checkpoint(trained)
    for name in ("model.onnx", "model.int8.onnx"):
        meta = read_onnx_metadata(str(exported / name))
        assert meta.labels == ckpt.labels
        assert meta.thresholds == pytest.approx(ckpt.thresholds)
        assert meta.preprocess == ckpt.preprocess
        assert meta.model_name == ckpt.model_name and meta.model_kwargs == ckpt.model_kwargs
        assert meta.split["test_ids"] == ckpt.split["test_ids"]
    assert read_onnx_metadata(str(exported / "model.int8.onnx")).quantization["format"] == "QDQ"


def test_evaluate_runs_on_int8_output(exported, small_data):
    from federated.evaluate import evaluate_model

    r = evaluate_model(exported / "model.int8.onnx", small_data, "test")
    assert r["records"] > 50 and set(r["per_class"]) == set(LABELS)


def test_gather_uses_the_checkpoint_validation_and_test_splits(trained, small_data):
    ckpt = load_checkpoint(trained)
    data = gather(ckpt, small_data, calibration_records=10)
    assert set(data.validation.keys) == set(ckpt.split["val_ids"])
    assert not set(data.validation.keys) & set(ckpt.split["test_ids"])
    assert set(data.test.keys) == set(ckpt.split["test_ids"])
    assert data.calibration.shape[1:] == (12, 2500)


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path, small_data, capsys):
    ckpt = _checkpoint("resnet1d18")
    ckpt.model_name = "se_resnet1d18"  # weights of one model labelled as another
    save_checkpoint(tmp_path / "wrong.pt", ckpt)
    assert export_main(["--checkpoint", str(tmp_path / "wrong.pt"), "--calibration-data", str(small_data), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "wrong.pt" in err and "do not fit model 'se_resnet1d18'" in err
    ckpt = _checkpoint("alexnet1d")
    ckpt.model_name = "squeezenet1d"  # and arguments of one model given to another
    save_checkpoint(tmp_path / "wrong2.pt", ckpt)
    assert export_main(["--checkpoint", str(tmp_path / "wrong2.pt"), "--calibration-data", str(small_data), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "wrong2.pt" in err and "cannot build model 'squeezenet1d'" in err
    assert not (tmp_path / "o").exists()


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, small_data, capsys):
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x02garbage")
    assert export_main(["--checkpoint", str(tmp_path / "corrupt.pt"), "--calibration-data", str(small_data), "--out", str(tmp_path / "o")]) == 2
    assert "corrupt.pt" in capsys.readouterr().err


def test_failed_export_leaves_nothing_half_written(trained, small_data, tmp_path, capsys):
    out = tmp_path / "out"
    # An impossible gate: every recipe fails after files were written in the temporary folder.
    code = export_main([
        "--checkpoint", str(trained), "--calibration-data", str(small_data), "--out", str(out), "--min-agreement", "1.01",
        "--calibration-records", "10",
    ])
    assert code == 2
    assert "no int8 model passed the accuracy gate" in capsys.readouterr().err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]


def test_modelmeta_roundtrip():
    meta = ModelMeta("resnet1d18", {"num_classes": 6}, LABELS, "six", [0.3] * 6, PreprocessConfig().to_dict())
    assert ModelMeta.from_props(meta.to_props()) == meta


def _small_folder(small_data, tmp_path, n=60):
    """A folder of links to the first ``n`` CPSC2018 records (header + signal)."""
    folder = tmp_path / "data" / "cpsc2018"
    folder.mkdir(parents=True)
    for hea in sorted((small_data / "cpsc2018").glob("*.hea"))[:n]:
        for f in (hea, hea.with_suffix(".mat")):
            (folder / f.name).symlink_to(f)
    return folder.parent


def test_report_records_cpu_beside_latency_and_gate(tmp_path, small_data):
    """Fast: an untrained narrow model on 60 records with the gate opened; checks what the report says
    about the CPU (export/cpu.py) and that weights are 7-bit by default (reduce_range)."""
    from export.cpu import FEATURE_NAMES, cpu_class

    ckpt = _checkpoint("resnet1d18")
    save_checkpoint(tmp_path / "m.pt", ckpt)
    out = tmp_path / "out"
    assert export_main([
        "--checkpoint", str(tmp_path / "m.pt"), "--calibration-data", str(_small_folder(small_data, tmp_path)), "--out", str(out),
        "--min-agreement", "0", "--max-auroc-drop", "1", "--calibration-records", "8", "--repeats", "2",
    ]) == 0
    r = json.loads((out / "report.json").read_text())
    cls = cpu_class()
    assert r["latency_cpu"]["cpu_class"] == cls and r["speedups"]["cpu_class"] == cls
    assert set(FEATURE_NAMES) <= set(r["latency_cpu"]["cpu_features"]["features"])
    assert r["gate_machine"]["cpu_class"] == cls and "whatever machine exports" in r["gate_machine"]["note"]
    assert r["machine"]["cpu_class"] == cls and "vnni" in r["machine"]["cpu_features"]
    md = (out / "report.md").read_text()
    assert md.count(cls) >= len(r["latency_ms"]) + 2  # every latency row, the gate line, the speed-up line
    assert "gate ran on: " + cls in md
    # 7-bit weights by default: every int8 weight within onnxruntime's reduced range [-64, 64], so that two
    # u8 x s8 products (2 x 255 x 64 = 32,640) fit the signed 16-bit lane of AVX2 vpmaddubsw
    assert r["quantization"]["reduce_range"] is True
    q = read_onnx_metadata(str(out / "model.int8.onnx")).quantization
    assert q["reduce_range"] is True and q["activations"] == "uint8" and q["gate_cpu"] == cls
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(out / "model.int8.onnx")).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    big = [w for w in weights if w.size > 64]
    assert big and all(w.min() >= -64 and w.max() <= 64 for w in big)


def test_reduce_range_flag(monkeypatch):
    import export.__main__ as export_mod

    seen = []
    monkeypatch.setattr(export_mod, "run_export", lambda *a, **k: seen.append(k["reduce_range"]) or {})
    monkeypatch.setattr(export_mod, "markdown", lambda r: "")
    for flag in ([], ["--reduce-range"], ["--no-reduce-range"]):
        assert export_mod.main(["--checkpoint", "x.pt", "--out", "o", *flag]) == 0
    assert seen == [True, True, False]
