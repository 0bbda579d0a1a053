"""Hand features on real records: plausible values, AF irregularity, robustness; the baseline runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cpsc2018.catalog import scan
from cpsc2018.features import EXPERT_NAMES, FEATURE_NAMES, expert_features, r_peaks, window_features
from cpsc2018.preprocess import PreprocessConfig, preprocess, windows
from cpsc2018.readers import read_any


@pytest.fixture(scope="module")
def cpsc(data_dir):
    return scan(data_dir / "cpsc2018", progress=False).entries


def _first_window(path):
    rec = read_any(path)
    return rec, windows(preprocess(rec.signal, rec.fs), PreprocessConfig())[0]


def test_window_features_shape_and_heart_rate(data_dir):
    import neurokit2 as nk

    for name in ("A0001", "A0002", "A0009"):
        rec, w = _first_window(data_dir / "cpsc2018" / f"{name}.hea")
        f = window_features(w, 250.0)
        assert f.shape == (len(FEATURE_NAMES),) and f.dtype == np.float32 and np.isfinite(f).all()
        assert f[0] == 1.0  # valid
        hr = f[FEATURE_NAMES.index("heart_rate")] * 100
        assert 35 < hr < 200
        _, info = nk.ecg_peaks(nk.ecg_clean(rec.signal[1, : 10 * int(rec.fs)], sampling_rate=int(rec.fs)), sampling_rate=int(rec.fs))
        hr_nk = 60 / np.median(np.diff(info["ECG_R_Peaks"]) / rec.fs)
        assert abs(hr - hr_nk) < 10, (name, hr, hr_nk)


def test_af_is_more_irregular_than_normal(cpsc, data_dir):
    def cv(entries):
        vals = []
        for e in entries[:8]:
            _, w = _first_window(e.path)
            vals.append(window_features(w, 250.0)[FEATURE_NAMES.index("rr_cv")])
        return float(np.median(vals))

    af = [e for e in cpsc if e.classes == {"AF"}]
    normal = [e for e in cpsc if e.classes == {"Normal"}]
    assert len(af) >= 5 and len(normal) >= 5
    assert cv(af) > 2 * cv(normal)


def test_flat_and_noise_windows_are_marked_invalid():
    flat = window_features(np.zeros((12, 2500)), 250.0)
    assert flat[0] == 0 and np.all(flat == 0)
    noise = window_features(np.random.default_rng(0).normal(size=(12, 2500)) * 1e-6, 250.0)
    assert np.isfinite(noise).all()
    assert len(r_peaks(np.zeros((12, 100)), 250.0)[0]) == 0


def test_expert_features_physiological(cpsc):
    normal = [e for e in cpsc if e.classes == {"Normal"}][:4]
    for e in normal:
        f = expert_features(read_any(e.path).signal, e.fs)
        assert set(f) == set(EXPERT_NAMES)
        assert 40 < f["hr"] < 150
        assert 60 < f["pr_ms"] < 300 or np.isnan(f["pr_ms"])
        assert 30 < f["qrs_ms"] < 200 or np.isnan(f["qrs_ms"])


def test_bundle_branch_blocks_have_wider_qrs(cpsc):
    def width(entries):
        return np.nanmedian([expert_features(read_any(e.path).signal, e.fs)["qrs_width_v1_ms"] for e in entries[:6]])

    bbb = [e for e in cpsc if e.classes & {"LBBB", "RBBB"} and len(e.classes) == 1]
    normal = [e for e in cpsc if e.classes == {"Normal"}]
    assert width(bbb) > width(normal)


def test_expert_features_never_raise():
    f = expert_features(np.zeros((12, 5000)), 500.0)
    assert all(np.isnan(v) for v in f.values())
    x = np.random.default_rng(1).normal(size=(12, 5000))
    x[3, 100:200] = np.nan
    expert_features(x, 500.0)  # noise with NaN: features or NaN, no exception


def test_baseline_runs_on_real_records(data_dir, tmp_path):
    from federated.baseline import main

    out = tmp_path / "baseline"
    assert main(["--data", str(data_dir / "cpsc2018"), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert {"logreg", "gbm", "features"} <= set(m)
    for kind in ("logreg", "gbm"):
        assert set(m[kind]["val"]["per_class"]) == {"AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC"}
        assert len(m[kind]["thresholds"]) == 6
    # AF is what RR features see best: on held-out CPSC records it must be well above chance.
    assert m["logreg"]["test"]["per_class"]["AF"]["auroc"] > 0.8
