"""A folder at once: ``python -m mobile_app.classify --data DIR --out FILE`` (``ecg-lite predict``) writes one
row per record through the app's own Classifier, lists unreadable files with an error, and takes an ONNX
file or a training checkpoint."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobile_app.classify import columns, main, predict_folder
from mobile_app.inference import DEFAULT_MODEL, Classifier

WFDB = ["A0001", "A0002", "A0003", "A0004", "A0005", "A0006"]  # CPSC2018 (WFDB), one per row


@pytest.fixture(scope="module")
def folder(data_dir, tmp_path_factory) -> Path:
    """Real records of three formats and three files that cannot be read."""
    root = tmp_path_factory.mktemp("predict-data")
    (root / "wfdb").mkdir()
    for name in WFDB:
        for ext in (".hea", ".mat"):
            (root / "wfdb" / f"{name}{ext}").symlink_to(data_dir / "cpsc2018" / f"{name}{ext}")
    (root / "original").mkdir()
    for name in ("A1980.mat",):  # the original CPSC2018 challenge format
        (root / "original" / name).symlink_to(data_dir / "cpsc2018_original" / name)
    (root / "mitbih").mkdir()
    for ext in (".hea", ".dat", ".atr"):  # two leads: readable, but not for a 12-lead model
        (root / "mitbih" / f"100{ext}").symlink_to(data_dir / "mitbih" / f"100{ext}")
    bad = root / "bad"
    bad.mkdir()
    shutil.copy(data_dir / "cpsc2018" / "A0007.hea", bad)  # header without its signal file
    (bad / "garbage.hea").write_text("this is not a header\n")
    (bad / "orphan.dat").write_bytes(b"\x00" * 64)  # signal without a header
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_writes_one_row_per_record(folder, tmp_path, capsys):
    out = tmp_path / "results.csv"
    assert main(["--data", str(folder), "--out", str(out), "--json", "--workers", "2"]) == 0
    assert "records ->" in capsys.readouterr().out
    rows = _rows(out)
    clf = Classifier(DEFAULT_MODEL)
    assert list(rows[0]) == columns(list(clf.meta.labels))
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(rows) == len(WFDB) + 1 + 1 + 3, [r["path"] for r in rows]
    for name in WFDB:
        r = by_name[f"{name}.hea"]
        assert r["error"] == "" and r["source"] == "CPSC2018" and r["quality"] in ("good", "usable")
        expected = clf.classify(folder / "wfdb" / f"{name}.hea")
        got = [float(r[f"p_{n}"]) for n in expected.labels]
        np.testing.assert_allclose(got, expected.probabilities, atol=1e-4)
        assert [int(r[n]) for n in expected.labels] == [int(n in expected.positives) for n in expected.labels]
        assert r["positives"].split() == expected.positives
        assert abs(float(r["duration_s"]) - expected.duration_s) < 0.01
    assert by_name["A1980.mat"]["error"] == "" and by_name["A1980.mat"]["p_AF"] != ""
    assert "supports its leads (MLII, V5)" in by_name["100.hea"]["error"] and by_name["100.hea"]["p_AF"] == ""
    for name in ("A0007.hea", "garbage.hea", "orphan.dat"):
        assert by_name[name]["error"].startswith("cannot read"), by_name[name]
    full = json.loads(out.with_suffix(".json").read_text())
    assert len(full) == len(WFDB) + 1 and all("quality" in j and j["calibrated"] for j in full)


def test_unusable_recording_gets_no_probabilities(data_dir, tmp_path):
    import wfdb

    rec = wfdb.rdrecord(str(data_dir / "cpsc2018" / "A0002"))
    sig = rec.p_signal.copy()
    sig[:, 0:6] = 0.0  # six dead leads, lead I among them: no reduced lead set can take the record
    d = tmp_path / "dead"
    d.mkdir()
    wfdb.wrsamp("DEAD1", fs=rec.fs, units=rec.units, sig_name=rec.sig_name, p_signal=sig, fmt=["16"] * 12,
                write_dir=str(d), comments=["Dx: 426783006"])
    out = tmp_path / "dead.csv"
    s = predict_folder(DEFAULT_MODEL, d, out, workers=1)
    (row,) = _rows(out)
    assert s["verdicts"] == {"unusable": 1} and row["quality"] == "unusable" and row["p_AF"] == "" and row["error"] == ""
    assert "6 of 12 leads unreadable" in row["quality_reasons"]
    predict_folder(DEFAULT_MODEL, d, out, workers=1, keep_unusable=True)
    assert _rows(out)[0]["p_AF"] != ""


def test_predict_with_a_checkpoint(data_dir, tmp_path):
    import torch

    from cpsc2018.preprocess import PreprocessConfig
    from federated.checkpoint import Checkpoint, save_checkpoint
    from resnet1d import create_model

    kw = {"num_classes": 6, "in_leads": 12, "widths": [8, 16, 24, 32]}
    torch.manual_seed(0)
    ckpt = Checkpoint("resnet1d18", kw, create_model("resnet1d18", **kw).state_dict(), "six",
                      ["AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC"], PreprocessConfig().to_dict(), [0.5] * 6)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, ckpt)
    d = tmp_path / "two"
    d.mkdir()
    for name in ("A0001", "A0002"):
        for ext in (".hea", ".mat"):
            (d / f"{name}{ext}").symlink_to(data_dir / "cpsc2018" / f"{name}{ext}")
    out = tmp_path / "ckpt.csv"
    assert main(["--data", str(d), "--out", str(out), "--model", str(path), "--workers", "1"]) == 0
    rows = _rows(out)
    assert len(rows) == 2 and all(r["error"] == "" and 0 <= float(r["p_RBBB"]) <= 1 for r in rows)
    # The same network as an fp32 ONNX file gives the same table (torch vs onnxruntime parity).
    from export.onnx_export import export_fp32

    onnx_path = tmp_path / "tiny.onnx"
    export_fp32(ckpt, onnx_path, 2500)
    out2 = tmp_path / "onnx.csv"
    assert main(["--data", str(d), "--out", str(out2), "--model", str(onnx_path), "--workers", "1"]) == 0
    for a, b in zip(rows, _rows(out2)):
        assert a["record"] == b["record"] and a["quality"] == b["quality"]
        for n in ("AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC"):
            assert abs(float(a[f"p_{n}"]) - float(b[f"p_{n}"])) < 1e-3


def test_bad_model_and_missing_out(folder, tmp_path, capsys):
    assert main(["--data", str(folder), "--out", str(tmp_path / "x.csv"), "--model", str(tmp_path / "none.onnx")]) == 2
    assert "no model at" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", str(folder)])
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.csv")]) == 2
    assert not (tmp_path / "x.csv").exists()


def test_console_entry_point(folder, tmp_path):
    exe = Path(sys.executable).parent / "ecg-lite"
    assert exe.exists(), "ecg-lite is not installed: pip install -e . (make venv)"
    listing = subprocess.run([str(exe)], capture_output=True, text=True)
    assert listing.returncode == 2
    from ecg_lite.cli import COMMANDS

    assert list(COMMANDS) == ["inspect", "train", "evaluate", "export", "predict", "app"]
    for cmd, (module, _) in COMMANDS.items():
        assert cmd in listing.stdout
        spec = importlib.util.find_spec(module)  # the module exists and has the main() the CLI calls
        assert spec is not None and "\ndef main(argv" in Path(spec.origin).read_text(), module
    for cmd in ("inspect", "predict", "app"):  # the others import torch and Flower: slow for --help
        assert subprocess.run([str(exe), cmd, "--help"], capture_output=True, text=True, timeout=120).returncode == 0, cmd
    out = tmp_path / "cli.csv"
    proc = subprocess.run([str(exe), "predict", "--data", str(folder / "wfdb"), "--out", str(out), "--workers", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(_rows(out)) == len(WFDB)
    bad = subprocess.run([str(exe), "nonsense"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command" in bad.stderr
