"""The fused pipeline (export.pipeline + the app's reader of it) on real records.

A small int8 network (untrained resnet1d18 at test widths, quantized on real windows: the pipeline's
arithmetic does not depend on how good the network is) and the gradient-boosting feature model on
the numpy expert features of a fixed record subset (cpsc2018/ and cinc2021/: 257 records).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cpsc2018.catalog import load, scan
from cpsc2018.features import EXPERT_NAMES, expert_features
from cpsc2018.preprocess import EVAL_MAX_WINDOWS, PreprocessConfig, preprocess, windows
from cpsc2018.splits import split_by_patient
from export.metadata import read_onnx_metadata
from export.onnx_export import export_fp32, meta_from_checkpoint, write_metadata
from export.pipeline import (
    FEATURE_FILE, NETWORK_FILE, WEIGHT_GRID, choose_weight, feature_model_to_onnx, fit_feature_model, fuse, main,
    write_pipeline,
)
from export.quantize import WindowReader, quantize, recipes
from export.runtime import OnnxPredictor
from federated.baseline import feature_matrix
from federated.checkpoint import Checkpoint, save_checkpoint
from mobile_app.classify import main as classify_main
from mobile_app.inference import Classifier, ClassifyError, PipelineSpec
from resnet1d import create_model
from tests.test_models import SMALL

LABELS = ["AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC"]
WEIGHT = 0.3  # the hand-built pipeline's network weight (the CLI chooses its own)


@pytest.fixture(scope="module")
def pipe_data(data_dir, tmp_path_factory) -> Path:
    """A fixed subset (links): every six-disease label has positives in it."""
    root = tmp_path_factory.mktemp("pipeline-data")
    for name in ("cpsc2018", "cinc2021"):
        (root / name).symlink_to(data_dir / name, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def network(pipe_data, tmp_path_factory):
    """Checkpoint with a patient split of ``pipe_data`` and its int8 QDQ export (metadata as ``python -m export``)."""
    entries = [e for e in scan(pipe_data, progress=False).entries if e.n_leads == 12]
    parts = split_by_patient(entries, fractions=(0.6, 0.2, 0.2), seed=0, label_set="six")
    kw = {"num_classes": 6, "in_leads": 12, **SMALL["resnet1d18"]}
    torch.manual_seed(0)
    pre = PreprocessConfig()
    ckpt = Checkpoint(
        "resnet1d18", kw, create_model("resnet1d18", **kw).state_dict(), "six", LABELS, pre.to_dict(), [0.5] * 6,
        split={"seed": 0, "val_ids": [e.key for e in parts["val"]], "test_ids": [e.key for e in parts["test"]],
               "data_options": {"ptbxl_rate": 500}},
    )
    folder = tmp_path_factory.mktemp("network")
    save_checkpoint(folder / "best.pt", ckpt)
    (folder / "export").mkdir()
    fp32, int8 = folder / "export" / "model.onnx", folder / "export" / "model.int8.onnx"
    window = int(round(pre.fs * pre.window_s))
    export_fp32(ckpt, fp32, window)
    calib = np.concatenate([windows(preprocess(load(e).signal, e.fs, pre), pre, 2) for e in parts["train"][:8]])
    quantize(fp32, int8, WindowReader(calib), recipes(fp32, "minmax")[0])
    write_metadata(int8, meta_from_checkpoint(ckpt, {"format": "QDQ"}))
    return SimpleNamespace(checkpoint=folder / "best.pt", onnx=int8, parts=parts, pre=pre)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="module")
def fitted(network, cache):
    """Features of train/val/test, the feature model fitted on train (chosen on val) and its ONNX graph."""
    xs, ys = {}, {}
    for part in ("train", "val", "test"):
        entries = network.parts[part]
        xs[part], _ = feature_matrix(entries, cache, engine="numpy")
        ys[part] = np.array([e.targets("six") for e in entries], dtype=int)
    fm = fit_feature_model(xs["train"], ys["train"], xs["val"], ys["val"], seed=0, labels=LABELS)
    onx = feature_model_to_onnx(fm, EXPERT_NAMES, LABELS)
    return SimpleNamespace(model=fm, onnx=onx, x=xs, y=ys)


@pytest.fixture(scope="module")
def pipeline_dir(network, fitted, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline")
    spec = PipelineSpec(FEATURE_FILE, "numpy", list(EXPERT_NAMES), WEIGHT, [0.4, 0.5, 0.5, 0.5, 0.5, 0.6])
    write_pipeline(network.onnx, fitted.onnx, spec, folder)
    return folder


def _ort(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_app_pipeline_equals_python_reference(network, fitted, pipeline_dir):
    clf = Classifier(pipeline_dir / NETWORK_FILE)
    net = OnnxPredictor(str(network.onnx))
    for e in network.parts["test"][:6]:
        rec = load(e)
        pred = clf.predict(rec.signal, rec.fs)
        p_net = net.predict_windows(windows(preprocess(rec.signal, rec.fs, network.pre), network.pre, EVAL_MAX_WINDOWS)).max(axis=0)
        f = expert_features(rec.signal, rec.fs, engine="numpy")
        p_feat = fitted.model.predict_proba(np.array([[f[n] for n in EXPERT_NAMES]]))[0]
        reference = WEIGHT * p_net + (1 - WEIGHT) * p_feat
        assert pred.parts == ("network", "features") and pred.network_weight == WEIGHT
        np.testing.assert_allclose(pred.network, p_net, atol=1e-5)
        np.testing.assert_allclose(pred.features, p_feat, atol=1e-5)
        np.testing.assert_allclose(pred.probabilities, reference, atol=1e-5)
        assert pred.thresholds == [0.4, 0.5, 0.5, 0.5, 0.5, 0.6]


def test_classify_reports_parts_and_uses_pipeline_thresholds(pipe_data, pipeline_dir, capsys):
    r = Classifier(pipeline_dir / NETWORK_FILE).classify(pipe_data / "cpsc2018" / "A0001.hea")
    assert r.parts == ["network", "features"] and r.network_weight == WEIGHT
    assert r.thresholds == [0.4, 0.5, 0.5, 0.5, 0.5, 0.6]
    assert r.positives == [n for n, p, t in zip(r.labels, r.probabilities, r.thresholds) if p >= t]
    j = r.to_json()
    assert j["parts"] == ["network", "features"] and len(j["feature_probabilities"]) == 6
    assert classify_main(["--record", str(pipe_data / "cpsc2018" / "A0001.hea"), "--model", str(pipeline_dir / NETWORK_FILE)]) == 0
    assert "Parts run: network + features" in capsys.readouterr().out


def test_feature_onnx_equals_sklearn_on_rows_with_nan(fitted):
    x = np.vstack([fitted.x["val"], fitted.x["test"]])
    rng = np.random.default_rng(0)
    holes = x.copy()
    holes[rng.random(holes.shape) < 0.3] = np.nan
    rows = np.vstack([x, holes, np.full((1, x.shape[1]), np.nan)])
    assert np.isnan(x).any(), "the real features should already hold NaN (unmeasurable values)"
    got = _ort(fitted.onnx).run(None, {"features": rows.astype(np.float32)})[0]
    assert got.shape == (len(rows), 6) and got.dtype == np.float32
    np.testing.assert_allclose(got, fitted.model.predict_proba(rows), atol=1e-5)


def test_class_without_positive_training_record_is_constant_zero(fitted):
    y = fitted.y["train"].copy()
    y[:, 2] = 0  # LBBB: no positive training record
    fm = fit_feature_model(fitted.x["train"], y, fitted.x["val"], fitted.y["val"], seed=0, labels=LABELS)
    assert fm.chosen[2] == "constant 0" and any("LBBB" in n for n in fm.notes)
    rows = np.vstack([fitted.x["test"], np.full((2, len(EXPERT_NAMES)), np.nan)]).astype(np.float32)
    got = _ort(feature_model_to_onnx(fm, EXPERT_NAMES, LABELS)).run(None, {"features": rows})[0]
    assert np.all(got[:, 2] == 0.0)
    np.testing.assert_allclose(got, fm.predict_proba(rows), atol=1e-5)


def test_feature_never_measured_in_training_is_ignored_but_input_keeps_its_width(fitted):
    x_train = fitted.x["train"].copy()
    x_train[:, 3] = np.nan  # e.g. a feature the engine cannot measure at the training records' rate
    fm = fit_feature_model(x_train, fitted.y["train"], fitted.x["val"], fitted.y["val"], seed=0, labels=LABELS)
    assert 3 not in fm.columns and len(fm.columns) == len(EXPERT_NAMES) - 1
    model = feature_model_to_onnx(fm, EXPERT_NAMES, LABELS)
    assert json.loads(_ort(model).get_modelmeta().custom_metadata_map["ignored_features"]) == [EXPERT_NAMES[3]]
    rows = fitted.x["test"].astype(np.float32)
    got = _ort(model).run(None, {"features": rows})[0]
    np.testing.assert_allclose(got, fm.predict_proba(rows), atol=1e-5)
    rows[:, 3] = 1e3
    np.testing.assert_array_equal(_ort(model).run(None, {"features": rows})[0], got)


def test_missing_feature_model_is_a_clear_error(pipeline_dir, pipe_data, tmp_path, capsys):
    shutil.copy(pipeline_dir / NETWORK_FILE, tmp_path / NETWORK_FILE)
    with pytest.raises(ClassifyError, match=r"features\.onnx: feature model missing"):
        Classifier(tmp_path / NETWORK_FILE)
    assert classify_main(["--record", str(pipe_data / "cpsc2018" / "A0001.hea"), "--model", str(tmp_path / NETWORK_FILE)]) == 2
    assert "features.onnx" in capsys.readouterr().err


def test_feature_names_that_do_not_match_are_a_clear_error(pipeline_dir, fitted, tmp_path):
    shutil.copy(pipeline_dir / NETWORK_FILE, tmp_path / NETWORK_FILE)
    bad = onnx.ModelProto()
    bad.CopyFrom(fitted.onnx)
    props = {p.key: p.value for p in bad.metadata_props}
    props["feature_names"] = json.dumps(list(reversed(EXPERT_NAMES)))
    del bad.metadata_props[:]
    onnx.helper.set_model_props(bad, props)
    onnx.save(bad, str(tmp_path / FEATURE_FILE))
    with pytest.raises(ClassifyError, match=r"features\.onnx: its \d+ feature names do not match"):
        Classifier(tmp_path / NETWORK_FILE)


def test_metadata_round_trips(network, pipeline_dir, fitted):
    spec = PipelineSpec(FEATURE_FILE, "numpy", list(EXPERT_NAMES), 0.7, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert PipelineSpec.from_json(spec.to_json()) == spec
    clf = Classifier(pipeline_dir / NETWORK_FILE)
    assert clf.pipeline == PipelineSpec(FEATURE_FILE, "numpy", list(EXPERT_NAMES), WEIGHT, [0.4, 0.5, 0.5, 0.5, 0.5, 0.6])
    assert clf.meta == read_onnx_metadata(str(network.onnx))  # the network's own metadata is kept
    props = _ort(fitted.onnx).get_modelmeta().custom_metadata_map
    assert json.loads(props["labels"]) == LABELS and json.loads(props["feature_names"]) == list(EXPERT_NAMES)
    assert props["feature_engine"] == "numpy" and set(json.loads(props["chosen"])) == set(LABELS)
    for bad in ('{"version": 2}', "[]", "not json",
                spec.to_json().replace('"features.onnx"', '"../features.onnx"'),
                spec.to_json().replace('"network_weight": 0.7', '"network_weight": 1.5')):
        with pytest.raises(ValueError):
            PipelineSpec.from_json(bad)


def test_network_only_model_runs_as_before(network, pipe_data):
    clf = Classifier(network.onnx)
    rec = load(network.parts["test"][0])
    pred = clf.predict(rec.signal, rec.fs)
    ref = OnnxPredictor(str(network.onnx)).predict_windows(
        windows(preprocess(rec.signal, rec.fs, network.pre), network.pre, EVAL_MAX_WINDOWS)).max(axis=0)
    assert clf.pipeline is None and pred.parts == ("network",) and pred.features is None
    np.testing.assert_allclose(pred.probabilities, ref, atol=1e-6)
    assert pred.thresholds == [0.5] * 6
    r = clf.classify(pipe_data / "cpsc2018" / "A0001.hea")
    assert r.parts == ["network"] and r.feature_probabilities is None and r.network_weight is None


def test_choose_weight_ties_go_to_half_and_fuse_checks_shapes():
    rng = np.random.default_rng(0)
    y = np.zeros((40, 2), dtype=int)
    y[:10, 0] = y[5:20, 1] = 1
    p = rng.random((40, 2))
    assert choose_weight(p, p, y) == 0.5  # every weight ranks alike
    good = y * 0.9 + rng.random((40, 2)) * 0.05  # ranks perfectly
    bad = 1 - good  # ranks exactly backwards
    # fused = w*good + (1-w)*bad ranks perfectly for every w > 0.5: the tie goes to the closest, 0.6.
    assert choose_weight(good, bad, y) == 0.6
    assert choose_weight(bad, good, y) == 0.4
    assert set(WEIGHT_GRID) == {round(0.1 * i, 1) for i in range(11)}
    np.testing.assert_allclose(fuse(good, bad, 0.25), 0.25 * good + 0.75 * bad)
    with pytest.raises(ValueError, match="shape"):
        fuse(good, bad[:, :1], 0.5)


def test_cli_writes_pipeline_through_the_app(network, pipe_data, cache, tmp_path, capsys):
    out = tmp_path / "pipeline"
    args = ["--checkpoint", str(network.checkpoint), "--network", str(network.onnx), "--data", str(pipe_data),
            "--cache-dir", str(cache), "--latency-records", "3"]
    assert main([*args, "--out", str(network.onnx.parent)]) == 2  # would overwrite the export
    assert "network's folder" in capsys.readouterr().err
    assert main([*args, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([NETWORK_FILE, FEATURE_FILE, "report.json", "report.md", "scores.npz", "reliability.png"])
    scores = np.load(out / "scores.npz")
    assert scores["test_pipeline"].shape == scores["test_targets"].shape == (len(scores["test_keys"]), 6)
    report = json.loads((out / "report.json").read_text())
    spec = Classifier(out / NETWORK_FILE).pipeline
    assert spec is not None and spec.network_weight in WEIGHT_GRID
    assert report["pipeline"]["network_weight"] == spec.network_weight and report["pipeline"]["thresholds"] == spec.thresholds
    assert report["decided_on"] == "validation" and report["records"]["validation"] > 0 and report["records"]["test"] > 0
    for part in ("validation", "test"):
        assert set(report["results"][part]) >= {"network", "features", "pipeline"}
        assert set(report["results"][part]["pipeline"]["per_class"]) == set(LABELS)
    assert report["feature_model"]["onnx_vs_sklearn_max_abs_diff"] <= 1e-5
    assert report["sizes_mb"]["total"] <= 5.0 and report["latency"]["records"] == 3
    assert isinstance(report["machine"]["avx512_vnni"], bool)
    md = (out / "report.md").read_text()
    assert "AVX512-VNNI" in md and "Latency per 10 s record" in md


def test_weight_rules():
    from export.pipeline import WEIGHT_GRID, WEIGHT_RULES, choose_weight

    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < 0.2).astype(int)
    # The network separates the classes, the feature model is noise: every scoring rule leans to the network.
    p_net = np.clip(y * 0.6 + rng.random((200, 3)) * 0.4, 0, 1)
    p_feat = rng.random((200, 3))
    for rule in WEIGHT_RULES:
        w = choose_weight(p_net, p_feat, y, rule=rule)
        assert w in WEIGHT_GRID
        assert w == 0.5 if rule == "half" else w >= 0.8, (rule, w)
    with pytest.raises(ValueError, match="weight rule"):
        choose_weight(p_net, p_feat, y, rule="best")
