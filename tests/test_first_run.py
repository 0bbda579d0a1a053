"""First-run paths a new user meets: no records and no network, no display for the app."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    """A 127.0.0.1 port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (ROOT / ".venv" / ".installed").exists(), reason="make demo needs the project's .venv")
def test_make_demo_without_records_or_network_says_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    proc = subprocess.run(
        # -o: the venv is there (the test runs inside it); never reinstall it here.
        ["make", "--no-print-directory", "-C", str(ROOT), "-o", ".venv/.installed", "demo", f"ECG_DATA={tmp_path / 'none'}",
         f"DEMO_BASE_URL=http://127.0.0.1:{_closed_port()}/mirror", f"DEMO_OUT={tmp_path / 'out'}"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in text
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert "cannot be reached" in errors[0] and "ECG_DATA" in errors[0]
    assert not (tmp_path / "out").exists(), "nothing may run after the failed download"


def test_app_without_display_names_xvfb_run():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run([sys.executable, "-m", "mobile_app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "xvfb-run" in proc.stderr and "Traceback" not in proc.stderr
