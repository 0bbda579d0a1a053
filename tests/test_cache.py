"""Record cache: invalidation when any signal file changes, and float32 storage equal to preprocess."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cpsc2018.cache import RecordCache, _fingerprint
from cpsc2018.catalog import Entry, load, scan
from cpsc2018.preprocess import PreprocessConfig, preprocess


def _copy_records(src: Path, dest: Path, names: tuple[str, ...]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        for ext in (".hea", ".mat"):
            shutil.copy2(src / f"{name}{ext}", dest / f"{name}{ext}")  # copy2 keeps size and mtime


def test_replaced_signal_file_with_unchanged_header_is_not_served_stale(data_dir, tmp_path):
    data = tmp_path / "data"
    _copy_records(data_dir / "cpsc2018", data, ("A0002", "A0003"))
    entries = scan(data, progress=False).entries
    cfg = PreprocessConfig()
    first = RecordCache.build(entries, cfg, tmp_path / "cache", progress=False)
    i = first.keys.index("wfdb:A0002")
    before = first.get(i).copy()
    # Same length, same size and (copy2) the same mtime to the second: only the content changed.
    shutil.copy2(data_dir / "cpsc2018" / "A0003.mat", data / "A0002.mat")
    again = RecordCache.build(entries, cfg, tmp_path / "cache", progress=False)
    fresh = preprocess(load(entries[i]).signal, entries[i].fs, cfg)
    assert not np.allclose(before, fresh, atol=0.1)  # the test would prove nothing otherwise
    assert again.folder != first.folder
    np.testing.assert_allclose(again.get(i), fresh, atol=2e-3 * np.abs(fresh).max())  # storage precision: see below


def test_signal_files_of_every_format(data_dir):
    from cpsc2018.cache import signal_files

    def entry(fmt: str, path: Path) -> Entry:
        return Entry("r", "p", "s", fmt, str(path), 500.0, 5000, 12, (), "cpsc_text")

    wfdb_hea = data_dir / "cpsc2018" / "A0002.hea"
    assert signal_files(entry("wfdb", wfdb_hea)) == [wfdb_hea, wfdb_hea.with_suffix(".mat")]
    ptb_hea = data_dir / "ptbxl" / "records100" / "00000" / "00001_lr.hea"
    assert signal_files(entry("ptbxl", ptb_hea)) == [ptb_hea, ptb_hea.with_suffix(".dat")]
    mit_hea = data_dir / "mitbih" / "100.hea"  # opens with a comment line
    assert signal_files(entry("mitbih", mit_hea)) == [mit_hea, mit_hea.with_suffix(".dat")]
    mat = next((data_dir / "cpsc2018_original").glob("*.mat"))  # original CPSC: a .mat, no header
    assert signal_files(entry("cpsc_mat", mat)) == [mat]


def test_fingerprint_changes_with_the_signal_file_only(data_dir, tmp_path):
    _copy_records(data_dir / "cpsc2018", tmp_path, ("A0002",))
    e = Entry("A0002", "A0002", "CPSC2018", "wfdb", str(tmp_path / "A0002.hea"), 500.0, 5000, 12, (), "cpsc_text")
    cfg = PreprocessConfig()
    a = _fingerprint([e], cfg)
    assert _fingerprint([e], cfg) == a
    shutil.copy2(data_dir / "cpsc2018" / "A0003.mat", tmp_path / "A0002.mat")
    assert _fingerprint([e], cfg) != a
    assert _fingerprint([replace(e, path=str(tmp_path / "missing.hea"))], cfg) != a


@pytest.mark.parametrize("rec", ["A0001", "A0004"])
def test_cached_signal_equals_preprocess_exactly(data_dir, tmp_path, rec):
    # Training reads the cache, evaluate and the app preprocess afresh: they must see the same numbers.
    _copy_records(data_dir / "cpsc2018", tmp_path / "data", ("A0001", "A0004"))
    entries = scan(tmp_path / "data", progress=False).entries
    cfg = PreprocessConfig()
    cache = RecordCache.build(entries, cfg, tmp_path / "cache", progress=False)
    i = cache.keys.index(f"wfdb:{rec}")
    fresh = preprocess(load(entries[i]).signal, entries[i].fs, cfg)
    got = cache.get(i)
    assert got.dtype == np.float32 and got.shape == fresh.shape
    assert np.array_equal(got, fresh)
