"""Calibration (export/calibration.py): fitted per class, lowers the expected calibration error on held-out
predictions of the real shipped pipeline, travels in the ONNX metadata and is applied by the app."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from cpsc2018.catalog import load
from export.calibration import (
    CALIBRATION_KEY, Calibration, ClassCalibration, ece, fit_calibration, fit_class,
)
from export.metadata import MetadataError
from mobile_app.inference import DEFAULT_MODEL, Classifier, ClassifyError


def test_platt_recovers_a_known_miscalibration():
    rng = np.random.default_rng(0)
    z = rng.normal(-2.0, 2.0, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)  # true probability sigmoid(z)
    p = 1 / (1 + np.exp(-2.0 * z))  # an over-confident model: sigmoid(2 z)
    c = fit_class(p, y, "platt")
    assert c.method == "platt" and c.a == pytest.approx(0.5, abs=0.08) and abs(c.b) < 0.15
    assert ece(c.apply(p), y) < 0.5 * ece(p, y)
    assert fit_class(p, y, "auto").method == "isotonic"  # 4,000 records, ~800 positives: enough for a step function
    assert fit_class(p[:300], y[:300], "auto").method == "platt"
    assert fit_class(p, np.zeros_like(y), "platt").method == "identity"  # no positive: nothing to fit
    iso = fit_class(p, y, "isotonic")
    assert np.all(np.diff(iso.apply(np.linspace(0, 1, 101))) >= 0)


@pytest.fixture(scope="module")
def real_outputs(twelve_lead_entries):
    """The shipped pipeline's uncalibrated fused probabilities on the fixed small subset (715 records)."""
    if not DEFAULT_MODEL.exists():
        pytest.fail(f"the shipped model {DEFAULT_MODEL} is missing: run 'make model'")
    clf = Classifier(DEFAULT_MODEL)
    labels = list(clf.meta.labels)
    p, y = [], []
    for e in twelve_lead_entries:
        rec = load(e)
        pred = clf.predict(rec.signal, rec.fs)
        p.append(pred.uncalibrated)
        y.append(e.targets(clf.meta.label_set))
    return np.array(p), np.array(y, dtype=int), labels


def test_calibration_lowers_ece_on_held_out_records(real_outputs):
    p, y, labels = real_outputs
    fit, held = np.arange(len(p)) % 2 == 0, np.arange(len(p)) % 2 == 1  # interleaved halves of the subset
    cal = fit_calibration(p[fit], y[fit], labels)
    after = cal.apply(p[held])
    before_ece = [ece(p[held][:, k], y[held][:, k]) for k in range(len(labels))]
    after_ece = [ece(after[:, k], y[held][:, k]) for k in range(len(labels))]
    print("held-out ECE before/after:", {n: (round(b, 4), round(a, 4)) for n, b, a in zip(labels, before_ece, after_ece)})
    assert np.mean(after_ece) < np.mean(before_ece)
    # Monotone per class: the ranking (AUROC) and the decisions at mapped thresholds do not change.
    for k in range(len(labels)):
        order = np.argsort(p[held][:, k], kind="stable")
        assert np.all(np.diff(after[order, k]) >= -1e-12)


def test_calibration_is_applied_from_the_metadata(real_outputs, tmp_path, data_dir):
    p, y, labels = real_outputs
    cal = fit_calibration(p, y, labels, "platt")
    model = onnx.load(str(DEFAULT_MODEL))
    props = {m.key: m.value for m in model.metadata_props}
    props[CALIBRATION_KEY] = cal.to_json()
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    path = tmp_path / "model.int8.onnx"
    onnx.save(model, str(path))
    for part in DEFAULT_MODEL.parent.glob("*.onnx"):  # the feature model and the reduced-lead networks it names
        if part.name != DEFAULT_MODEL.name:
            (tmp_path / part.name).symlink_to(part)
    clf = Classifier(path)
    assert clf.calibration is not None and clf.calibration.methods == ["platt"] * len(labels)
    r = clf.classify(data_dir / "cpsc2018" / "A0001.hea")
    np.testing.assert_allclose(r.probabilities, cal.apply(np.array(r.uncalibrated_probabilities)), atol=1e-9)
    np.testing.assert_allclose(r.thresholds, cal.apply(np.array(clf.decision_thresholds)), atol=1e-9)
    assert r.calibrated and "calibrated" in clf.description
    # Decisions: the uncalibrated probability against the tuned thresholds, as without calibration.
    assert r.positives == [n for n, q, t in zip(labels, r.uncalibrated_probabilities, clf.decision_thresholds) if q >= t]
    # The shipped file carries its own calibration (export.pipeline), fitted on its validation records.
    shipped = Classifier(DEFAULT_MODEL).calibration
    assert shipped is not None and shipped.fitted_on == "validation" and shipped.labels == labels


def test_malformed_calibration_is_a_clear_error(tmp_path):
    good = Calibration(["AF"], [ClassCalibration("platt", 1.2, -0.3)], records=10, positives=[3])
    assert Calibration.from_json(good.to_json()).classes[0].a == pytest.approx(1.2)
    for bad in ("not json", "[]", good.to_json().replace('"a": 1.2', '"a": -1.2'),
                good.to_json().replace('"platt"', '"magic"'), good.to_json().replace('"version": 1', '"version": 9')):
        with pytest.raises(MetadataError):
            Calibration.from_json(bad, source="m.onnx")
    model = onnx.load(str(DEFAULT_MODEL))
    props = {m.key: m.value for m in model.metadata_props}
    props[CALIBRATION_KEY] = Calibration(["X"] * 6, [ClassCalibration()] * 6).to_json()
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    onnx.save(model, str(tmp_path / "model.int8.onnx"))
    for part in DEFAULT_MODEL.parent.glob("*.onnx"):  # the feature model and the reduced-lead networks it names
        if part.name != DEFAULT_MODEL.name:
            (tmp_path / part.name).symlink_to(part)
    with pytest.raises(ClassifyError, match="calibration labels"):
        Classifier(tmp_path / "model.int8.onnx")
