"""Shared fixtures. Tests read the real records in ``../shared/data`` (or ``$ECG_DATA``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpsc2018.util import default_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = default_data_dir()
    if not (path / "cpsc2018").is_dir():
        pytest.fail(f"real ECG records not found at {path}: set ECG_DATA or put ../shared/data beside the repo")
    return path


@pytest.fixture(scope="session")
def full_catalog(data_dir: Path):
    """Every record of the shared data, read once per session (about 20 s for 2,671 records)."""
    from cpsc2018.catalog import scan

    return scan(data_dir, progress=False)


@pytest.fixture(scope="session")
def twelve_lead_entries(full_catalog):
    return [e for e in full_catalog.entries if e.n_leads == 12]
