"""The Kivy app in a real window under Xvfb: it starts with a real record, the screenshot is a real
picture, the top label shown is what inference.py computes, and a bad file shows a message; the quality
verdict, the attribution shading, a greyed finding on a noisy lead, an unusable recording, the gain."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mobile_app.inference import DEFAULT_MODEL, Classifier
from tests.test_app_inference import model_path  # noqa: F401  (shared fixture)


def _run_app(model, record, tmp_path, *extra: str, tag: str = "shot"):
    if shutil.which("xvfb-run") is None:
        pytest.fail("xvfb-run not found: install xvfb (make apt-test)")
    shot, result = tmp_path / f"{tag}.png", tmp_path / f"{tag}.json"
    cmd = ["xvfb-run", "-a", "-s", "-screen 0 480x800x24", sys.executable, "-m", "mobile_app",
           "--model", str(model), "--record", str(record), "--screenshot", str(shot), "--result-json", str(result), *extra]
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


def _paper(shot):
    """The ECG paper's pixels (below the header and record line, above the verdict)."""
    return np.asarray(Image.open(shot).convert("RGB")).astype(int)[80:500, 40:]


def _orange(px) -> int:
    """Pixels tinted by the attribution overlay (orange over the pink paper)."""
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    return int(((r > 225) & (g > 150) & (g < 225) & (b < 200) & (r - b > 50)).sum())


def _ink(px) -> int:
    return int(((px[..., 0] < 80) & (px[..., 1] < 80) & (px[..., 2] < 80)).sum())


def _write_variant(data_dir, tmp_path, name, change):
    """A real record (A0001, RBBB) with its signal changed, written as a WFDB record."""
    import wfdb

    rec = wfdb.rdrecord(str(data_dir / "cpsc2018" / "A0001"))
    sig = change(rec.p_signal.copy())
    wfdb.wrsamp(name, fs=rec.fs, units=rec.units, sig_name=rec.sig_name, p_signal=sig, fmt=["16"] * 12,
                write_dir=str(tmp_path), comments=["Dx: 59118001"])
    return tmp_path / f"{name}.hea"


def test_app_shows_verdict_and_shaded_attribution(data_dir, tmp_path):
    record = data_dir / "cpsc2018" / "A0001.hea"
    shot, shown = _run_app(DEFAULT_MODEL, record, tmp_path)
    assert shown["quality"]["verdict"] == "good" and shown["withheld"] is False
    assert shown["shaded"] == "RBBB" and shown["explanation"]["labels"] == ["RBBB"]
    assert shown["gain_mm_per_mv"] == 10.0 and shown["calibrated"] is True
    px = _paper(shot)
    assert _orange(px) > 2000, "no attribution shading on the paper"
    shot20, shown20 = _run_app(DEFAULT_MODEL, record, tmp_path, "--gain", "20", tag="gain20")
    assert shown20["gain_mm_per_mv"] == 20.0
    assert _ink(_paper(shot20)) > 1.2 * _ink(px), "a doubled gain should draw taller (longer) traces"


def test_finding_on_a_noisy_lead_is_greyed(data_dir, tmp_path):
    rng = np.random.default_rng(0)

    def noisy_v1(sig):
        sig[:, 6] += rng.normal(0.0, 0.5, sig.shape[0])
        return sig

    record = _write_variant(data_dir, tmp_path, "NOISYV1", noisy_v1)
    _, shown = _run_app(DEFAULT_MODEL, record, tmp_path)
    assert shown["quality"]["verdict"] == "usable" and "V1" in shown["quality"]["bad_leads"]
    assert shown["positives"] == ["RBBB"] and shown["greyed"] == {"RBBB": ["V1"]}


def test_unusable_recording_shows_why_not_probabilities(data_dir, tmp_path):
    def dead(sig):
        # The six limb leads dead: the precordial leads that remain hold no lead set the shipped model
        # serves (every one has lead I), so nothing can be routed (test_leads: dead leads that can).
        sig[:, 0:6] = 0.0
        return sig

    record = _write_variant(data_dir, tmp_path, "DEAD6", dead)
    shot, shown = _run_app(DEFAULT_MODEL, record, tmp_path)
    assert shown["withheld"] is True and shown["quality"]["verdict"] == "unusable"
    assert "6 of 12 leads unreadable" in shown["quality"]["reasons"][0]
    assert "greyed" not in shown and "explanation" not in shown  # no bars, no shading
    assert _orange(_paper(shot)) < 200
