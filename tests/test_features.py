"""Hand features on real CPSC2018 records: plausible values, what tells classes apart, robustness."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from cpsc2018.catalog import Entry, load
from cpsc2018.features import EXPERT_NAMES, FEATURE_NAMES, expert_features, window_features
from cpsc2018.preprocess import PreprocessConfig, preprocess, windows

PRE = PreprocessConfig()




def _window(e: Entry) -> np.ndarray:
    rec = load(e)
    return windows(preprocess(rec.signal, rec.fs, PRE), PRE)[0]


def _feature(e: Entry, name: str) -> float:
    return float(window_features(_window(e), PRE.fs)[FEATURE_NAMES.index(name)])


def test_window_features_heart_rate_matches_neurokit(cpsc_by_label):
    import neurokit2 as nk

    for e in cpsc_by_label["Normal"][:5]:
        rec = load(e)
        f = window_features(_window(e), PRE.fs)
        assert f.shape == (len(FEATURE_NAMES),) and f.dtype == np.float32 and np.isfinite(f).all()
        assert f[FEATURE_NAMES.index("valid")] == 1.0
        hr = f[FEATURE_NAMES.index("heart_rate")] * 100  # stored as bpm / 100
        assert 40 < hr < 150, (e.record_id, hr)
        fs = int(rec.fs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, info = nk.ecg_peaks(nk.ecg_clean(rec.signal[1, : 10 * fs], sampling_rate=fs), sampling_rate=fs)
        hr_nk = 60 / np.median(np.diff(info["ECG_R_Peaks"]) / fs)
        assert abs(hr - hr_nk) < 10, (e.record_id, hr, hr_nk)


def test_af_windows_are_more_irregular_than_normal(cpsc_by_label):
    af = [_feature(e, "rr_cv") for e in cpsc_by_label["AF"][:8]]
    normal = [_feature(e, "rr_cv") for e in cpsc_by_label["Normal"][:8]]
    # Sinus rhythm varies by a few per cent beat to beat, AF by 10-30 %.
    assert np.median(af) > 2 * np.median(normal), (af, normal)
    assert sum(a > np.median(normal) for a in af) >= 7, (af, normal)


def test_flat_and_broken_windows_are_marked_invalid():
    flat = window_features(np.zeros((12, PRE.window_samples), dtype=np.float32), PRE.fs)
    assert flat[FEATURE_NAMES.index("valid")] == 0 and np.all(flat == 0)
    nan = np.full((12, PRE.window_samples), np.nan, dtype=np.float32)
    out = window_features(nan, PRE.fs)
    assert np.isfinite(out).all() and out[FEATURE_NAMES.index("valid")] == 0
    short = window_features(np.ones((12, 50), dtype=np.float32), PRE.fs)
    assert np.isfinite(short).all() and short[0] == 0
    with pytest.raises(ValueError, match="shape"):
        window_features(np.zeros(PRE.window_samples), PRE.fs)


def test_expert_features_physiological_on_normal_records(cpsc_by_label):
    for e in cpsc_by_label["Normal"][:4]:
        f = expert_features(load(e).signal, e.fs)
        assert list(f) == list(EXPERT_NAMES)
        assert 40 < f["hr"] < 150, (e.record_id, f["hr"])
        assert 80 < f["pr_ms"] < 260, (e.record_id, f["pr_ms"])
        assert 50 < f["qrs_ms"] < 130, (e.record_id, f["qrs_ms"])
        assert 250 < f["qt_ms"] < 500, (e.record_id, f["qt_ms"])
        assert f["p_corr"] > 0.5, (e.record_id, f["p_corr"])  # a P wave, the same in every beat


def test_expert_features_tell_conduction_blocks(cpsc_by_label):
    def median(label: str, name: str, n: int = 6) -> float:
        return float(np.nanmedian([expert_features(load(e).signal, e.fs)[name] for e in cpsc_by_label[label][:n]]))

    normal_qrs = median("Normal", "qrs_ms")
    assert median("LBBB", "qrs_ms") > normal_qrs + 20
    assert median("RBBB", "qrs_ms") > normal_qrs + 10
    assert median("RBBB", "v1_terminal_r") > median("Normal", "v1_terminal_r") + 0.1  # RSR' in V1
    assert median("I-AVB", "pr_ms") > median("Normal", "pr_ms") + 30


def test_expert_features_never_raise_on_bad_signals():
    flat = expert_features(np.zeros((12, 5000)), 500.0)
    assert list(flat) == list(EXPERT_NAMES) and all(math.isnan(v) for v in flat.values())
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(12, 5000))
    noise[3, 100:200] = np.nan
    noise[5] = np.nan  # a lead that was never recorded
    out = expert_features(noise, 500.0)  # features or NaN, no exception
    assert all(isinstance(v, float) for v in out.values())
    assert all(math.isnan(v) for v in expert_features(np.zeros((12, 300)), 500.0).values())  # 0.6 s
    with pytest.raises(ValueError, match="12-lead"):
        expert_features(np.zeros((2, 5000)), 500.0)


def test_expert_features_survive_nan_samples_in_a_real_record(cpsc_by_label):
    e = cpsc_by_label["Normal"][0]
    sig = load(e).signal.astype(np.float64)
    clean = expert_features(sig, e.fs)
    sig[:, 1000:1100] = np.nan  # a 0.2 s dropout in every lead
    sig[7] = np.nan
    broken = expert_features(sig, e.fs)
    assert abs(broken["hr"] - clean["hr"]) < 5
    assert math.isfinite(broken["qrs_ms"])
