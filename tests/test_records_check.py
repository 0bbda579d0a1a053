"""check_signal: records with too few valid samples are refused, partly missing leads still work."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from cpsc2018.preprocess import preprocess
from cpsc2018.readers import read_any, read_wfdb
from cpsc2018.records import LEADS, RecordError, check_signal


@pytest.fixture(scope="module")
def a0001(data_dir):
    return read_wfdb(data_dir / "cpsc2018" / "A0001.hea")  # 12 leads, 500 Hz, 15 s


def test_record_nan_but_two_samples_is_refused(a0001):
    x = np.full_like(a0001.signal, np.nan)
    x[1, 100:102] = a0001.signal[1, 100:102]  # the review's case: 2 real samples in lead II
    with pytest.raises(RecordError) as err:
        check_signal(x, "some/where/A0001.hea", fs=a0001.fs)
    msg = str(err.value)
    assert msg.startswith("some/where/A0001.hea: ") and "0 of 12 leads" in msg


def test_too_few_usable_leads_is_refused(a0001):
    x = a0001.signal.copy()
    x[:7] = np.nan  # 5 of 12 leads left: fewer than half
    with pytest.raises(RecordError, match=r"A0001\.hea: only 5 of 12 leads"):
        check_signal(x, "A0001.hea", fs=a0001.fs)


def test_leads_mostly_nan_are_unusable(a0001):
    x = a0001.signal.copy()
    x[:, : int(0.6 * x.shape[1])] = np.nan  # every lead 60 % missing
    with pytest.raises(RecordError, match="0 of 12 leads"):
        check_signal(x, "A0001.hea")  # the fraction rule needs no sampling rate


def test_less_than_two_seconds_of_valid_signal_is_refused(a0001):
    x = a0001.signal[:, :1500].copy()  # 3 s at 500 Hz
    x[:, :600] = np.nan  # 60 % finite, but only 1.8 s of it
    with pytest.raises(RecordError, match="2 s"):
        check_signal(x, "A0001.hea", fs=500.0)


def test_half_the_leads_missing_still_works(a0001):
    x = a0001.signal.copy()
    x[[0, 2, 4]] = np.nan  # three leads entirely missing
    x[6, 1000:4000] = np.nan  # a 6 s dropout in V1 (about 40 % of the lead)
    x[8:11] = np.nan  # three more: 6 of 12 usable, the minimum
    out = check_signal(x, "A0001.hea", fs=a0001.fs)
    y = preprocess(out, a0001.fs)
    assert np.isfinite(y).all()
    assert np.all(y[[0, 2, 4, 8, 9, 10]] == 0)  # repair_nan zeroes a lead with no finite sample


def _write(tmp_path, name: str, x: np.ndarray, fs: float = 500.0):
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(LEADS), sig_name=list(LEADS), p_signal=np.ascontiguousarray(x.T), fmt=["16"] * len(LEADS), adc_gain=[1000.0] * len(LEADS), baseline=[0] * len(LEADS), write_dir=str(tmp_path))
    return tmp_path / f"{name}.hea"


def test_wfdb_file_almost_all_nan_is_refused_through_the_reader(a0001, tmp_path):
    x = np.full_like(a0001.signal[:, :2500], np.nan, dtype=np.float64)
    x[1, 100:102] = (0.5, -0.3)  # 2 real, different samples (not "flat")
    hea = _write(tmp_path, "NANREC", x)
    with pytest.raises(RecordError, match=r"NANREC\.hea: only 0 of 12 leads"):
        read_any(hea)


def test_wfdb_file_with_missing_leads_reads_and_preprocesses(a0001, tmp_path):
    x = a0001.signal[:, :2500].astype(np.float64)
    x[[3, 9]] = np.nan
    hea = _write(tmp_path, "GAPREC", x)
    rec = read_any(hea)
    assert np.isnan(rec.signal[[3, 9]]).all()
    y = preprocess(rec.signal, rec.fs)
    assert np.isfinite(y).all() and np.all(y[[3, 9]] == 0)
