"""Bad inputs, each on a copy of a real record that the test corrupts: one clear error naming the
file and the problem, never a traceback; ``inspect`` lists them and goes on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from cpsc2018.inspect import main as inspect_main
from cpsc2018.preprocess import PreprocessConfig, SignalTooShort, preprocess, windows
from cpsc2018.readers import read_any, read_cpsc_mat, read_wfdb
from cpsc2018.records import RecordError


def _copy(src: Path, dst_dir: Path, name: str | None = None) -> Path:
    """Copy a WFDB record (.hea + signal file), optionally renamed; returns the new header path."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    stem = name or src.stem
    text = src.with_suffix(".hea").read_text()
    if name:
        text = text.replace(src.stem, name)
    (dst_dir / f"{stem}.hea").write_text(text)
    for ext in (".mat", ".dat"):
        if src.with_suffix(ext).exists():
            shutil.copy(src.with_suffix(ext), dst_dir / f"{stem}{ext}")
    return dst_dir / f"{stem}.hea"


def test_truncated_mat(data_dir, tmp_path):
    hea = _copy(data_dir / "cpsc2018" / "A0001", tmp_path)
    mat = hea.with_suffix(".mat")
    mat.write_bytes(mat.read_bytes()[: mat.stat().st_size // 3])
    with pytest.raises(RecordError) as err:
        read_wfdb(hea)
    assert "A0001" in str(err.value) and "truncated" in str(err.value)


def test_empty_mat(data_dir, tmp_path):
    hea = _copy(data_dir / "cpsc2018" / "A0002", tmp_path)
    hea.with_suffix(".mat").write_bytes(b"")
    with pytest.raises(RecordError, match="A0002.mat: signal file is empty"):
        read_wfdb(hea)


def test_truncated_dat(data_dir, tmp_path):
    hea = _copy(data_dir / "mitbih" / "101", tmp_path)
    dat = hea.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[:1000])
    with pytest.raises(RecordError, match="101.dat: signal file truncated"):
        read_any(hea)


def test_missing_signal_file(data_dir, tmp_path):
    hea = _copy(data_dir / "cpsc2018" / "A0003", tmp_path)
    hea.with_suffix(".mat").unlink()
    with pytest.raises(RecordError, match="A0003.hea: signal file A0003.mat is missing"):
        read_wfdb(hea)


def test_wrong_lead_count(data_dir, tmp_path):
    hea = _copy(data_dir / "cpsc2018" / "A0004", tmp_path)
    lines = hea.read_text().splitlines()
    first = lines[0].split()
    first[1] = "11"
    hea.write_text("\n".join([" ".join(first)] + [l for l in lines[1:] if not l.endswith(" V6")]) + "\n")
    with pytest.raises(RecordError) as err:
        read_wfdb(hea)
    assert "A0004" in str(err.value) and "expected 12 leads, got 11" in str(err.value)


def test_odd_first_line_is_repaired(data_dir, tmp_path):
    """Some Georgia headers in the wild start 'E00001.mat 12 500': the signal is recoverable."""
    hea = _copy(data_dir / "cinc2021" / "E00001", tmp_path)
    lines = hea.read_text().splitlines()
    lines[0] = "E00001.mat 12 500 5000"
    hea.write_text("\n".join(lines) + "\n")
    rec = read_wfdb(hea)
    good = read_wfdb(data_dir / "cinc2021" / "E00001.hea")
    np.testing.assert_array_equal(rec.signal, good.signal)
    assert rec.record_id == "E00001" and rec.site == "Georgia"


def test_odd_first_line_unrecoverable(data_dir, tmp_path):
    hea = _copy(data_dir / "cinc2021" / "E00002", tmp_path)
    lines = hea.read_text().splitlines()
    lines[0] = "E00002.mat twelve leads"
    hea.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match="E00002.hea: malformed header"):
        read_wfdb(hea)


def _write_cpsc_mat(path: Path, data: np.ndarray) -> None:
    scipy.io.savemat(path, {"ECG": {"sex": "Male", "age": 60, "data": data}})


def test_nan_and_flat_leads(data_dir, tmp_path):
    good = read_cpsc_mat(data_dir / "cpsc2018_original" / "A1980.mat").signal.astype(np.float64)
    partly = good.copy()
    partly[2, 100:400] = np.nan  # a dropout in lead III
    partly[7] = 0.0  # a disconnected V2
    _write_cpsc_mat(tmp_path / "X0001.mat", partly)
    rec = read_cpsc_mat(tmp_path / "X0001.mat")
    x = preprocess(rec.signal, rec.fs)
    assert np.isfinite(x).all()
    assert np.all(x[7] == 0)  # the flat lead stays zero instead of amplified noise
    flat = np.zeros_like(good)
    _write_cpsc_mat(tmp_path / "X0002.mat", flat)
    with pytest.raises(RecordError, match="X0002.mat: every lead is flat"):
        read_cpsc_mat(tmp_path / "X0002.mat")
    _write_cpsc_mat(tmp_path / "X0003.mat", np.full_like(good, np.nan))
    with pytest.raises(RecordError, match="X0003.mat: every sample is NaN"):
        read_cpsc_mat(tmp_path / "X0003.mat")


def test_truncated_and_foreign_mat(data_dir, tmp_path):
    src = data_dir / "cpsc2018_original" / "A1981.mat"
    (tmp_path / "T.mat").write_bytes(src.read_bytes()[:200])
    with pytest.raises(RecordError, match="T.mat: not a readable MATLAB file"):
        read_cpsc_mat(tmp_path / "T.mat")
    scipy.io.savemat(tmp_path / "F.mat", {"val": np.zeros((12, 10))})
    with pytest.raises(RecordError, match="F.mat: no struct 'ECG'"):
        read_cpsc_mat(tmp_path / "F.mat")


def test_unknown_label_codes_are_other(data_dir, tmp_path):
    hea = _copy(data_dir / "cpsc2018" / "A0005", tmp_path)
    text = hea.read_text().replace("#Dx: ", "#Dx: XYZ,")
    hea.write_text(text)
    rec = read_wfdb(hea)
    assert "XYZ" in rec.codes and "XYZ" not in rec.classes


def test_1000hz_record_resampled(data_dir):
    rec = read_wfdb(data_dir / "cinc2021" / "S0001.hea")
    assert rec.fs == 1000
    x = preprocess(rec.signal, rec.fs)
    assert x.shape == (12, round(rec.signal.shape[1] * 250 / 1000))


def test_short_records(data_dir):
    rec = read_wfdb(data_dir / "cpsc2018" / "A0001.hea")
    cfg = PreprocessConfig()
    five_s = preprocess(rec.signal[:, :2500], rec.fs, cfg)  # 5 s < 10 s window: padded
    w = windows(five_s, cfg)
    assert w.shape == (1, 12, 2500) and np.all(w[0, :, 1250:] == 0)
    with pytest.raises(SignalTooShort, match="1.00 s long; at least 2 s"):
        preprocess(rec.signal[:, :500], rec.fs, cfg)


def test_inspect_lists_unreadable_and_goes_on(data_dir, tmp_path, capsys):
    root = tmp_path / "mixed"
    _copy(data_dir / "cpsc2018" / "A0001", root)
    _copy(data_dir / "cinc2021" / "JS00001", root)
    bad = _copy(data_dir / "cpsc2018" / "A0002", root)
    bad.with_suffix(".mat").unlink()
    trunc = _copy(data_dir / "cpsc2018" / "A0003", root)
    trunc.with_suffix(".mat").write_bytes(trunc.with_suffix(".mat").read_bytes()[:100])
    (root / "orphan.dat").write_bytes(b"\0" * 100)
    out = tmp_path / "inspect.json"
    assert inspect_main(["--data", str(root), "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert list(s) == ["records", "by_source", "labels", "ptbxl_folders", "unreadable"]
    assert s["ptbxl_folders"] == {}
    assert s["records"] == 2 and s["by_source"] == {"CPSC2018": 1, "Chapman/Ningbo": 1}
    assert s["labels"] == {"AF": 1, "I-AVB": 0, "LBBB": 0, "RBBB": 2, "PAC": 0, "PVC": 0}
    reasons = {Path(u["path"]).name: u["reason"] for u in s["unreadable"]}
    assert "missing" in reasons["A0002.hea"]
    assert "truncated" in reasons["A0003.mat"] or "truncated" in reasons.get("A0003.hea", "")
    assert "without a header" in reasons["orphan.dat"]
    assert "unreadable: 3" in capsys.readouterr().out


def test_inspect_missing_folder(tmp_path, capsys):
    assert inspect_main(["--data", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_inspect_real_data_matches_readme(small_data, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert inspect_main(["--data", str(small_data), "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    # The fixed subset (conftest.small_data): every folder but ptbxl_extra/, whose README counts were
    # 685 records (AF 35, I-AVB 19, LBBB 15, RBBB 35, PAC 34, PVC 31; PTB-XL 422), plus the first 30
    # rows of ptbxl_extra/'s table (AF 3, I-AVB 3, LBBB 1, PVC 3).
    assert s["labels"] == {"AF": 38, "I-AVB": 22, "LBBB": 16, "RBBB": 35, "PAC": 34, "PVC": 34}
    assert s["records"] == 715
    assert s["by_source"] == {
        "CPSC-Extra": 8, "CPSC2018": 129, "Chapman/Ningbo": 71, "Georgia": 24, "MIT-BIH": 23, "PTB": 8, "PTB-XL": 452,
    }
    assert s["unreadable"] == []
    # ptbxl_extra/ has records100/ only: read at 100 Hz although 500 Hz was asked, and said so.
    assert s["ptbxl_folders"]["ptbxl_extra"] == {"records": 30, "rates": [100]}
    assert s["ptbxl_folders"]["ptbxl"] == {"records": 400, "rates": [500]}
    assert "ptbxl_extra has no 500 Hz files" in capsys.readouterr().out
