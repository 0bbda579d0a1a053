"""Preprocessing: rate, zero phase, band edges, NaN repair, windows, config round trip."""

import numpy as np
import pytest

from cpsc2018.preprocess import PreprocessConfig, bandpass, notch, preprocess, random_crop, repair_nan, window_starts, windows
from cpsc2018.readers import read_wfdb


def test_real_record_to_model_input(data_dir):
    rec = read_wfdb(data_dir / "cpsc2018" / "A0001.hea")  # 15 s at 500 Hz
    x = preprocess(rec.signal, rec.fs)
    assert x.dtype == np.float32 and x.shape == (12, 3750)
    np.testing.assert_allclose(x.mean(axis=1), 0, atol=1e-3)
    np.testing.assert_allclose(x.std(axis=1), 1, atol=1e-3)
    w = windows(x, PreprocessConfig())
    assert w.shape == (2, 12, 2500)
    np.testing.assert_array_equal(w[0], x[:, :2500])
    np.testing.assert_array_equal(w[-1], x[:, -2500:])  # the last window ends at the record's end


def test_zero_phase_keeps_qrs_timing():
    fs = 500.0
    t = np.arange(5000) / fs
    pulse = np.exp(-(((t - 5.0) / 0.02) ** 2))  # a 40 ms QRS-like bump at 5 s
    y = bandpass(pulse[None], fs, 0.5, 40.0, 2)[0]
    assert abs(np.argmax(y) - np.argmax(pulse)) <= 1


def test_band_removes_mains_and_wander():
    fs = 500.0
    t = np.arange(10000) / fs
    mains = np.sin(2 * np.pi * 50 * t)
    wander = np.sin(2 * np.pi * 0.1 * t)
    qrs_band = np.sin(2 * np.pi * 10 * t)
    y = notch(bandpass(np.stack([mains, wander, qrs_band]), fs, 0.5, 40.0, 2), fs, (50.0, 60.0))
    mid = slice(2000, 8000)  # away from the edges
    assert np.abs(y[0, mid]).max() < 0.05  # 50 Hz mains gone
    assert np.abs(y[1, mid]).max() < 0.1  # 0.1 Hz baseline wander gone
    assert np.abs(y[2, mid]).max() > 0.9  # 10 Hz kept


def test_repair_nan_interpolates():
    x = np.array([[0.0, np.nan, 2.0, np.inf], [np.nan] * 4])
    y = repair_nan(x)
    np.testing.assert_allclose(y[0], [0, 1, 2, 2])
    np.testing.assert_array_equal(y[1], 0)


def test_window_starts_cover_record():
    assert window_starts(2000, 2500) == [0]
    assert window_starts(6000, 2500) == [0, 1750, 3500]
    assert window_starts(60_000, 2500, max_windows=6)[-1] == 57_500


def test_random_crop_deterministic_and_padded():
    x = np.arange(100, dtype=np.float32)[None].repeat(12, 0)
    a = random_crop(x, 30, np.random.default_rng(1))
    b = random_crop(x, 30, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert random_crop(x[:, :10], 30, np.random.default_rng(0)).shape == (12, 30)


def test_config_round_trip_and_errors():
    cfg = PreprocessConfig(fs=100.0, band_high_hz=35.0, notch_hz=(50.0,))
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown preprocessing parameter"):
        PreprocessConfig.from_dict({**cfg.to_dict(), "gain": 2})
    with pytest.raises(ValueError, match="filter band"):
        PreprocessConfig(fs=100.0, band_high_hz=60.0)
    with pytest.raises(ValueError, match="normalize"):
        PreprocessConfig(normalize="minmax")
    with pytest.raises(ValueError, match="2-D"):
        preprocess(np.zeros(100), 500)
