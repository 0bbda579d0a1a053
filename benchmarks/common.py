"""What every benchmark records beside its figures: the machine and the software."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# One implementation for the export report and the benchmarks (export/cpu.py: standard library only).
from export.cpu import cpu_class as _cpu_class  # noqa: E402
from export.cpu import cpu_features  # noqa: E402,F401  (re-exported: benchmarks.common.cpu_features)


def cpu_class() -> str:
    """This machine in one line for beside a latency figure, e.g. 'Intel Xeon, AVX512-VNNI' or
    'AMD EPYC 7763, AVX2 (no VNNI)' (int8 speed-ups differ about twofold between the two: PLATFORM.md)."""
    return _cpu_class(cpu_features())


def cpu_model() -> str:
    return str(cpu_features().get("model") or platform.processor() or "unknown CPU")


def machine_line() -> str:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = "?"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"Machine: {cpu_model()} ({cpu_class()}), {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}; commit {commit or '?'}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
