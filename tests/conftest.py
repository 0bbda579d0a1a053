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


# The fixed subset for tests that train or score (DECISIONS: tests must not grow with ../shared/data):
# every folder except ptbxl_extra/ (the 685 records the suite was sized on), plus the first
# SMALL_EXTRA recordings of ptbxl_extra/ (records100/ only) so that the 100 Hz-only layout stays covered.
SMALL_EXTRA = 30


@pytest.fixture(scope="session")
def small_data(data_dir: Path, tmp_path_factory) -> Path:
    """A folder of links to a fixed subset of the shared records (the table of ptbxl_extra is cut to it)."""
    import csv

    root = tmp_path_factory.mktemp("small-data")
    for child in sorted(data_dir.iterdir()):
        if child.is_dir() and child.name != "ptbxl_extra":
            (root / child.name).symlink_to(child, target_is_directory=True)
    extra_src = data_dir / "ptbxl_extra"
    if extra_src.is_dir():
        extra = root / "ptbxl_extra"
        extra.mkdir()
        with open(extra_src / "ptbxl_database.csv", newline="") as f:
            reader = csv.DictReader(f)
            rows = [r for _, r in zip(range(SMALL_EXTRA), reader)]
            fields = reader.fieldnames
        with open(extra / "ptbxl_database.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        for r in rows:
            for suffix in (".hea", ".dat"):
                src = extra_src / (r["filename_lr"] + suffix)
                dst = extra / (r["filename_lr"] + suffix)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(src)
    return root


@pytest.fixture(scope="session")
def cpsc_by_label(data_dir: Path) -> dict:
    """CPSC2018 records with a single label, by label, in file order."""
    from cpsc2018.catalog import scan

    out: dict[str, list] = {}
    for e in scan(data_dir / "cpsc2018", progress=False).entries:
        if len(e.classes) == 1:
            out.setdefault(next(iter(e.classes)), []).append(e)
    return out


@pytest.fixture(scope="session")
def small_catalog(small_data: Path):
    """The fixed subset, read once per session."""
    from cpsc2018.catalog import scan

    return scan(small_data, progress=False)


@pytest.fixture(scope="session")
def twelve_lead_entries(small_catalog):
    return [e for e in small_catalog.entries if e.n_leads == 12]
