"""The Kivy app in a real window under Xvfb: it starts with a real record, the screenshot is a real
picture, the top label shown is what inference.py computes, and a bad file shows a message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mobile_app.inference import Classifier
from tests.test_app_inference import model_path  # noqa: F401  (shared fixture)


def _run_app(model, record, tmp_path):
    if shutil.which("xvfb-run") is None:
        pytest.fail("xvfb-run not found: install xvfb (make apt-test)")
    shot, result = tmp_path / "shot.png", tmp_path / "result.json"
    cmd = ["xvfb-run", "-a", "-s", "-screen 0 480x800x24", sys.executable, "-m", "mobile_app",
           "--model", str(model), "--record", str(record), "--screenshot", str(shot), "--result-json", str(result)]
    env = {**os.environ, "KIVY_HOME": str(tmp_path / "kivy")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return shot, json.loads(result.read_text())


def test_app_shows_record_and_same_top_label(model_path, data_dir, tmp_path):  # noqa: F811
    record = data_dir / "cpsc2018" / "A0001.hea"
    shot, shown = _run_app(model_path, record, tmp_path)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] >= 700 and img.shape[1] >= 400
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    assert colours > 50, "screenshot looks blank"
    assert img.std() > 20
    expected = Classifier(model_path).classify(record)
    assert shown["top"] == expected.top
    assert shown["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)


def test_app_shows_error_for_bad_file(model_path, data_dir, tmp_path):  # noqa: F811
    shutil.copy(data_dir / "cpsc2018" / "A0002.hea", tmp_path)  # without its .mat
    _, shown = _run_app(model_path, tmp_path / "A0002.hea", tmp_path)
    assert shown == {"error": "cannot read A0002.hea: signal file A0002.mat is missing"}
