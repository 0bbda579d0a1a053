"""The app's inference path (no screen, no Kivy, no torch in the module): real records, bad files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobile_app.inference import (
    DEFAULT_MODEL, Classifier, ClassifyError, from_java_output, make_backend, on_android, to_java_buffer,
)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    """The shipped int8 model; without it (a fresh checkout mid-change), a small fp32 export."""
    if DEFAULT_MODEL.exists():
        return DEFAULT_MODEL
    import torch

    from cpsc2018.preprocess import PreprocessConfig
    from export.onnx_export import export_fp32
    from federated.checkpoint import Checkpoint
    from resnet1d import create_model

    kw = {"num_classes": 6, "in_leads": 12, "widths": [8, 16, 24, 32]}
    torch.manual_seed(0)
    ckpt = Checkpoint("resnet1d18", kw, create_model("resnet1d18", **kw).state_dict(), "six",
                      ["AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC"], PreprocessConfig().to_dict(), [0.5] * 6)
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    export_fp32(ckpt, path, 2500)
    return path


def test_inference_module_imports_neither_kivy_nor_torch():
    code = "import sys, mobile_app.inference, mobile_app.settings; print('kivy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_classify_real_records(model_path, data_dir):
    clf = Classifier(model_path)
    assert clf.meta.labels == ["AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC"]
    for rec in (data_dir / "cpsc2018" / "A0001.hea", data_dir / "cinc2021" / "S0001.hea", data_dir / "cpsc2018_original" / "A1980.mat"):
        r = clf.classify(rec)
        p = np.array(r.probabilities)
        assert p.shape == (6,) and np.all((p >= 0) & (p <= 1))
        assert r.positives == [n for n, q, t in zip(r.labels, p, r.thresholds) if q >= t]
        assert r.display.shape[0] == 12 and r.inference_ms > 0
    again = clf.classify(data_dir / "cpsc2018" / "A0001.hea")
    assert again.probabilities == clf.classify(data_dir / "cpsc2018" / "A0001.hea").probabilities


def test_shipped_model_finds_rbbb_on_a0001(data_dir):
    if not DEFAULT_MODEL.exists():
        pytest.fail(f"the shipped model {DEFAULT_MODEL} is missing: run 'make model'")
    r = Classifier(DEFAULT_MODEL).classify(data_dir / "cpsc2018" / "A0001.hea")  # labelled RBBB
    assert r.top == "RBBB"
    assert Path(DEFAULT_MODEL).stat().st_size < 2_000_000


def test_bad_files_give_readable_errors(model_path, data_dir, tmp_path):
    clf = Classifier(model_path)
    shutil.copy(data_dir / "cpsc2018" / "A0002.hea", tmp_path)  # its .mat is missing
    with pytest.raises(ClassifyError, match="A0002.hea: signal file A0002.mat is missing"):
        clf.classify(tmp_path / "A0002.hea")
    with pytest.raises(ClassifyError, match=r"100\.hea: no model here supports its leads \(MLII, V5\).*Supported lead sets"):
        clf.classify(data_dir / "mitbih" / "100.hea")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ClassifyError, match="unsupported file type .txt"):
        clf.classify(tmp_path / "notes.txt")
    lines = (data_dir / "cpsc2018" / "A0003.hea").read_text().splitlines()
    first = lines[0].split()
    first[3] = "500"  # claims 1 s of signal
    (tmp_path / "A0003.hea").write_text("\n".join([" ".join(first), *lines[1:]]) + "\n")
    shutil.copy(data_dir / "cpsc2018" / "A0003.mat", tmp_path)
    with pytest.raises(ClassifyError, match="at least 2 s"):
        clf.classify(tmp_path / "A0003.hea")


def test_missing_or_foreign_model(tmp_path, data_dir):
    with pytest.raises(ClassifyError, match="no model at"):
        Classifier(tmp_path / "none.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(ClassifyError, match="not a loadable ONNX model"):
        Classifier(tmp_path / "bad.onnx")


def test_backend_selection_and_java_buffers(model_path):
    assert not on_android({}) and on_android({"ANDROID_ARGUMENT": "/data/app"})
    assert type(make_backend(model_path, {})).__name__ == "OrtBackend"
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    values, shape = to_java_buffer(x)
    assert shape == [2, 3, 4] and values[:5] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(from_java_output(values, (2, 3, 4)), x)
    with pytest.raises(ClassifyError):
        from_java_output(values, (2, 6))


def test_settings_remember_last_folder(tmp_path, data_dir):
    from mobile_app.settings import Settings

    s = Settings(tmp_path)
    assert s.last_folder is None
    s.remember_record(data_dir / "cpsc2018" / "A0001.hea")
    assert Settings(tmp_path).last_folder == str((data_dir / "cpsc2018").resolve())
    (tmp_path / "ecg-lite-settings.json").write_text("{broken")
    assert Settings(tmp_path).last_folder is None
