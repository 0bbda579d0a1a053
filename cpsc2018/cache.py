"""Disk cache of preprocessed records: one memory-mapped float32 file per set of records.

Stored as float32, exactly what :func:`cpsc2018.preprocess.preprocess` returns, so that validation and
test scoring during training (which read the cache) see the same numbers as ``evaluate`` and the app
(which preprocess afresh): a checkpoint's stored test metrics are reproducible. float16 storage
changed probabilities by up to 0.023. The disk cost is twice float16's: 12 leads x 250 Hz x 4 bytes
= 12 kB per second of record, so CPSC2018 (6,877 records, 6-60 s, ~16 s on average) takes about
1.3 GB and PTB-XL (21,799 x 10 s) about 2.6 GB. Memory stays bounded: the file is memory-mapped and
only the windows a batch touches are paged in. The cache is keyed by the preprocessing config and every file each record's
signal is read from (header and signal files: path, size, mtime, ctime), so a changed config or file
builds a new cache instead of serving stale data. It is
written into a temporary folder and renamed into place, so a killed build leaves nothing half-made.
Pure numpy (no torch): calibration and benchmarks use it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cpsc2018.catalog import Entry, load
from cpsc2018.preprocess import PreprocessConfig, preprocess
from cpsc2018.records import RecordError

DEFAULT_CACHE_DIR = Path(os.environ.get("ECG_CACHE", Path.home() / ".cache" / "ecg-lite"))
# float32: the dtype preprocess() returns (see the module docstring for why not float16).
DTYPE = np.float32
SIGNALS_FILE = "signals.f32"


def signal_files(entry: Entry) -> list[Path]:
    """Every file a record's signal is read from: the header and the signal files it names.

    WFDB (CinC, PTB-XL, MIT-BIH): the ``.hea`` plus each file named on its signal lines (usually one
    ``.mat``/``.dat``), and ``<stem>.mat``/``<stem>.dat`` beside it should the header be unreadable;
    the original CPSC2018 format: the ``.mat`` alone (it has no header).
    """
    path = Path(entry.path)
    if path.suffix != ".hea":
        return [path]
    files = [path]
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError:
        lines = []
    if lines:
        head = lines[0].split()
        n_sig = int(head[1]) if len(head) > 1 and head[1].isdigit() else 0
        for line in lines[1 : 1 + n_sig]:
            name = line.split()[0]
            if name != "~" and path.parent / name not in files:  # "~": no file (WFDB null signal)
                files.append(path.parent / name)
    if len(files) == 1:
        files += [p for p in (path.with_suffix(".mat"), path.with_suffix(".dat")) if p.exists()]
    return files


def _fingerprint(entries: Sequence[Entry], cfg: PreprocessConfig) -> str:
    """Key of a cache: the config plus path, size, mtime and ctime of every file each signal comes from.

    ctime as well as mtime: a signal file replaced by a copy that keeps its source's mtime (``cp -p``,
    ``shutil.copy2``) and size still gets a new ctime, which no user can set back.
    """
    h = hashlib.sha256(cfg.to_json().encode())
    h.update(f"|{np.dtype(DTYPE).name}\n".encode())  # a float16 cache of the same records is another cache
    for e in entries:
        h.update(f"{e.key}|{e.fs}".encode())
        for f in signal_files(e):
            try:
                st = os.stat(f)
                h.update(f"|{f}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}".encode())
            except OSError:
                h.update(f"|{f}|missing".encode())
        h.update(b"\n")
    return h.hexdigest()[:20]


@dataclass
class RecordCache:
    """Preprocessed records, each ``(n_leads, T_i)``, stored back to back in one float32 memmap."""

    folder: Path
    keys: list[str]
    offsets: np.ndarray  # start of each record in the flat array
    lengths: np.ndarray  # T_i in samples at cfg.fs
    n_leads: int
    cfg: PreprocessConfig
    skipped: list[dict]
    # Caches written before float32 storage (no "dtype" in their index) are float16 in signals.f16;
    # plans that point at one still open it.
    dtype: str = "float32"
    file: str = SIGNALS_FILE
    _data: np.memmap | None = None

    @classmethod
    def build(
        cls,
        entries: Sequence[Entry],
        cfg: PreprocessConfig,
        cache_dir: Path | str = DEFAULT_CACHE_DIR,
        *,
        progress: bool = True,
    ) -> "RecordCache":
        """Open the cache for these records and config, building it first if needed."""
        cache_dir = Path(cache_dir)
        folder = cache_dir / _fingerprint(entries, cfg)
        if (folder / "index.json").exists():
            return cls.open(folder)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir))
        try:
            cls._write(tmp, entries, cfg, progress)
            try:
                os.replace(tmp, folder)
            except OSError:  # another process finished the same cache first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(folder)

    @staticmethod
    def _write(tmp: Path, entries: Sequence[Entry], cfg: PreprocessConfig, progress: bool) -> None:
        keys: list[str] = []
        lengths: list[int] = []
        skipped: list[dict] = []
        n_leads = None
        with open(tmp / SIGNALS_FILE, "wb") as fh:
            for e in tqdm(entries, desc="preprocessing", unit="rec", disable=not progress):
                try:
                    x = preprocess(load(e).signal, e.fs, cfg)
                except (RecordError, ValueError) as exc:
                    skipped.append({"key": e.key, "path": e.path, "reason": str(exc)})
                    continue
                if n_leads is None:
                    n_leads = x.shape[0]
                if x.shape[0] != n_leads:
                    skipped.append({"key": e.key, "path": e.path, "reason": f"{x.shape[0]} leads, cache holds {n_leads}"})
                    continue
                fh.write(np.ascontiguousarray(x, dtype=DTYPE).tobytes())
                keys.append(e.key)
                lengths.append(int(x.shape[1]))
        index = {
            "keys": keys,
            "lengths": lengths,
            "n_leads": n_leads or 0,
            "cfg": cfg.to_dict(),
            "skipped": skipped,
            "dtype": np.dtype(DTYPE).name,
            "file": SIGNALS_FILE,
        }
        (tmp / "index.json").write_text(json.dumps(index))

    @classmethod
    def open(cls, folder: Path | str) -> "RecordCache":
        folder = Path(folder)
        index = json.loads((folder / "index.json").read_text())
        lengths = np.asarray(index["lengths"], dtype=np.int64)
        n_leads = int(index["n_leads"])
        offsets = np.concatenate([[0], np.cumsum(lengths * n_leads)[:-1]]).astype(np.int64) if len(lengths) else lengths
        return cls(
            folder,
            list(index["keys"]),
            offsets,
            lengths,
            n_leads,
            PreprocessConfig.from_dict(index["cfg"]),
            index["skipped"],
            dtype=index.get("dtype", "float16"),
            file=index.get("file", "signals.f16"),
        )

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict:
        # DataLoader workers re-open the memmap themselves instead of pickling its pages.
        state = self.__dict__.copy()
        state["_data"] = None
        return state

    def get(self, i: int) -> np.ndarray:
        """Record ``i`` as float32 ``(n_leads, T_i)``."""
        if self._data is None:
            self._data = np.memmap(self.folder / self.file, dtype=np.dtype(self.dtype), mode="r")
        start, t = int(self.offsets[i]), int(self.lengths[i])
        return np.asarray(self._data[start : start + self.n_leads * t], dtype=np.float32).reshape(self.n_leads, t)
