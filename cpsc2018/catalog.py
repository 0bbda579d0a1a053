"""Scan a data root, detect each record's format and source, and list what is there.

The catalog reads every record once (so that truncated or corrupt files are found here, not in the
middle of training) and keeps only light metadata: where the record is, which site and patient it
belongs to, its sampling rate, duration and label codes. Signals are read again, and cached, by the
Dataset. A file that cannot be read is listed under ``unreadable`` with the reason; scanning goes on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from cpsc2018.labels import Labelled
from cpsc2018.readers import _looks_like_mitbih, read_cpsc_mat, read_mitbih, read_ptbxl, read_wfdb, ptbxl_table
from cpsc2018.records import Record, RecordError


@dataclass(frozen=True)
class Entry(Labelled):
    """One readable recording. ``locator`` is what ``load`` needs to read it again."""

    record_id: str
    patient_id: str
    site: str
    source_format: str  # wfdb | cpsc_mat | ptbxl | mitbih
    path: str
    fs: float
    n_samples: int
    n_leads: int
    codes: tuple[str, ...]
    code_system: str
    ptbxl_root: str | None = None
    ptbxl_id: int | None = None

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    @property
    def key(self) -> str:
        """Unique within a catalog: a record id can appear in two formats (counted in each)."""
        return f"{self.source_format}:{self.record_id}"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Unreadable:
    path: str
    reason: str


@dataclass
class Catalog:
    root: str
    entries: list[Entry] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)

    def by_site(self) -> dict[str, list[Entry]]:
        out: dict[str, list[Entry]] = {}
        for e in self.entries:
            out.setdefault(e.site, []).append(e)
        return dict(sorted(out.items()))

    def select(self, *, formats: Iterable[str] | None = None) -> list[Entry]:
        keep = set(formats) if formats is not None else None
        return [e for e in self.entries if keep is None or e.source_format in keep]


def load(entry: Entry) -> Record:
    """Read an entry's record again (signal included)."""
    if entry.source_format == "ptbxl":
        assert entry.ptbxl_root is not None and entry.ptbxl_id is not None
        return read_ptbxl(entry.ptbxl_root, entry.ptbxl_id, rate=int(entry.fs))
    if entry.source_format == "cpsc_mat":
        return read_cpsc_mat(entry.path)
    if entry.source_format == "mitbih":
        return read_mitbih(entry.path)
    return read_wfdb(entry.path)


def ptbxl_rates_read(entries: Iterable[Entry]) -> dict[str, dict[str, int]]:
    """PTB-XL folder -> {sampling rate read (Hz, as text): recordings}. ``scan`` reads the rate asked
    where a folder has it and the other rate where only that one exists (``ptbxl_extra/``: 100 Hz)."""
    out: dict[str, dict[str, int]] = {}
    for e in entries:
        if e.source_format == "ptbxl":
            rates = out.setdefault(str(e.ptbxl_root), {})
            rates[f"{e.fs:g}"] = rates.get(f"{e.fs:g}", 0) + 1
    return dict(sorted(out.items()))


def _entry(rec: Record, **extra: object) -> Entry:
    return Entry(
        record_id=rec.record_id,
        patient_id=rec.patient_id,
        site=rec.site,
        source_format=rec.source_format,
        path=rec.path,
        fs=rec.fs,
        n_samples=int(rec.signal.shape[1]),
        n_leads=int(rec.signal.shape[0]),
        codes=rec.codes,
        code_system=rec.code_system,
        **extra,  # type: ignore[arg-type]
    )


def _candidates(root: Path, ptbxl_rate: int) -> Iterator[tuple[str, Path, int | None]]:
    """Yield (kind, path, ptbxl id) for everything under root that may be a record."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        here = Path(dirpath)
        names = set(filenames)
        if "ptbxl_database.csv" in names:
            # A PTB-XL root: its records are listed by the table; don't walk records100/500 as WFDB.
            dirnames[:] = [d for d in dirnames if d not in ("records100", "records500")]
            try:
                table = ptbxl_table(here)
            except RecordError:
                yield ("error", here / "ptbxl_database.csv", None)
                continue
            for ecg_id, row in sorted(table.items()):
                wanted = "filename_hr" if ptbxl_rate == 500 else "filename_lr"
                other = "filename_lr" if ptbxl_rate == 500 else "filename_hr"
                if (here / f"{row[wanted]}.hea").exists() or (here / f"{row[wanted]}.dat").exists():
                    yield ("ptbxl", here, ecg_id)
                elif (here / f"{row[other]}.hea").exists():
                    yield ("ptbxl-other-rate", here, ecg_id)
        for name in sorted(filenames):
            path = here / name
            if name.endswith(".hea"):
                yield ("hea", path, None)
            elif name.endswith(".mat") and f"{name[:-4]}.hea" not in names:
                yield ("mat", path, None)
            elif name.endswith(".dat") and f"{name[:-4]}.hea" not in names:
                yield ("orphan", path, None)


def scan(root: Path | str, *, ptbxl_rate: int = 500, progress: bool = True) -> Catalog:
    """Read every record under ``root``; PTB-XL at ``ptbxl_rate`` Hz (the other rate if only it exists)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist or is not a folder")
    catalog = Catalog(root=str(root))
    candidates = list(_candidates(root, ptbxl_rate))
    for kind, path, ecg_id in tqdm(candidates, desc=f"scanning {root}", unit="rec", disable=not progress):
        try:
            if kind == "error":
                raise RecordError(path, "PTB-XL table cannot be read")
            if kind == "orphan":
                raise RecordError(path, "signal file without a header (.hea)")
            if kind in ("ptbxl", "ptbxl-other-rate"):
                rate = ptbxl_rate if kind == "ptbxl" else (100 if ptbxl_rate == 500 else 500)
                rec = read_ptbxl(path, int(ecg_id), rate=rate)  # type: ignore[arg-type]
                catalog.entries.append(_entry(rec, ptbxl_root=str(path), ptbxl_id=int(ecg_id)))  # type: ignore[arg-type]
                continue
            if kind == "mat":
                rec = read_cpsc_mat(path)
            elif _looks_like_mitbih(path):
                rec = read_mitbih(path)
            else:
                rec = read_wfdb(path)
            catalog.entries.append(_entry(rec))
        except RecordError as exc:
            catalog.unreadable.append(Unreadable(exc.path, exc.problem))
    return catalog
