"""Readers, one per format. Each returns a :class:`~cpsc2018.records.Record` in mV, float32.

* WFDB challenge format (PhysioNet/CinC 2020-2021, and the CPSC2018 part of it): ``.hea`` + ``.mat``
  (or ``.dat``), any sampling rate, gains and baselines applied by wfdb, ``#Dx`` as CPSC text or
  SNOMED-CT ids.
* Original CPSC2018 challenge ``.mat`` (struct ``ECG`` with ``sex``, ``age``, ``data`` 12 x N in mV at
  500 Hz, standard lead order) with labels from the ``REFERENCE.csv`` beside it.
* PTB-XL native layout (``ptbxl_database.csv`` + ``records100/`` / ``records500/``).
* MIT-BIH Arrhythmia (2 leads at 360 Hz, the record's own lead order) with ``.atr`` beat annotations.

wfdb parses every header; the only thing done by hand is repairing a first line that names the
signal file instead of the record (``E00001.mat 12 500`` seen in some Georgia headers), which wfdb
rejects: the repaired header is written to a temporary folder beside a link to the signal file.
"""

from __future__ import annotations

import ast
import csv
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.io
import wfdb

from cpsc2018.labels import detect_code_system
from cpsc2018.records import LEADS, Beats, Record, RecordError, check_signal, standard_subset, to_standard_order
from cpsc2018.sites import site_of_challenge_record

_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3, "nu": 1.0, "": 1.0}


def _header_text(hea: Path) -> list[str]:
    try:
        return hea.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise RecordError(hea, f"cannot read header ({exc.strerror})") from None


@contextmanager
def _readable_header(hea: Path) -> Iterator[str]:
    """Yield a record path wfdb can open: the original, or a repaired copy of a bad first line."""
    lines = _header_text(hea)
    # The record line is the first line that is not a comment (MIT-BIH 100.hea opens with one).
    at = next((i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")), None)
    if at is None:
        raise RecordError(hea, "empty header")
    first = lines[at].split()
    name = first[0]
    if not name.endswith((".mat", ".dat")):
        yield str(hea.with_suffix(""))
        return
    # A first line like "E00001.mat 12 500": the record name carries the signal file's extension.
    tmp = Path(tempfile.mkdtemp(prefix="ecglite-hea-"))
    try:
        record = Path(name).stem
        lines[at] = " ".join([record, *first[1:]])
        (tmp / f"{record}.hea").write_text("\n".join(lines) + "\n")
        for line in lines[1:]:
            parts = line.split()
            if parts and not line.startswith("#"):
                src = hea.parent / parts[0]
                dst = tmp / parts[0]
                if src.exists() and not dst.exists():
                    os.symlink(src.resolve(), dst)
        yield str(tmp / record)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _comments(comments: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in comments:
        if ":" in c:
            key, _, value = c.partition(":")
            out[key.strip().lower()] = value.strip()
    return out


def _parse_age(text: str | None) -> float | None:
    try:
        age = float(text) if text is not None else None
    except ValueError:
        return None
    return age if age is not None and np.isfinite(age) and age >= 0 else None


def _physical_mv(rec: wfdb.Record, path: Path) -> np.ndarray:
    sig = rec.p_signal
    if sig is None:
        raise RecordError(path, "no signal decoded")
    sig = np.asarray(sig, dtype=np.float64).T
    units = rec.units or ["mV"] * sig.shape[0]
    scale = np.array([_UNIT_TO_MV.get((u or "").strip().lower(), np.nan) for u in units])
    if np.isnan(scale).any():
        bad = sorted({u for u, s in zip(units, scale) if np.isnan(s)})
        raise RecordError(path, f"unsupported signal unit(s) {bad}; expected mV or uV")
    return sig * scale[:, None]


def _rdrecord(hea: Path) -> wfdb.Record:
    """wfdb.rdrecord with every failure turned into a RecordError naming the file."""
    if not hea.exists():
        raise RecordError(hea, "header file not found")
    with _readable_header(hea) as record_path:
        try:
            header = wfdb.rdheader(record_path)
        except Exception as exc:  # wfdb raises bare ValueError/IndexError on malformed headers
            raise RecordError(hea, f"malformed header ({type(exc).__name__}: {exc})") from None
        files = sorted(set(header.file_name or []))
        for f in files:
            sig_file = hea.parent / f
            if not sig_file.exists():
                raise RecordError(hea, f"signal file {f} is missing")
            if sig_file.stat().st_size == 0:
                raise RecordError(sig_file, "signal file is empty")
        # Before decoding: wfdb reads a truncated file short or fails with a reshape error.
        _check_signal_file_size(hea, header)
        try:
            rec = wfdb.rdrecord(record_path)
        except Exception as exc:
            raise RecordError(hea, f"signal cannot be decoded ({type(exc).__name__}: {exc})") from None
    if header.sig_len and rec.p_signal is not None and rec.p_signal.shape[0] < header.sig_len:
        raise RecordError(hea, f"signal truncated: {rec.p_signal.shape[0]} of {header.sig_len} samples")
    return rec


def read_wfdb(hea: Path | str, *, site: str | None = None, patient_id: str | None = None, reduced: bool = False) -> Record:
    """Read a 12-lead WFDB record (PhysioNet/CinC challenge ``.hea`` + ``.mat``/``.dat``).

    ``reduced=True`` also reads a record with only some of the standard leads (six limb leads, lead I
    of a wrist device...): ``Record.leads`` then names its rows, in ``LEADS`` order (the app and
    ``evaluate`` read single files so; training reads 12-lead records only)."""
    hea = Path(hea)
    if hea.suffix != ".hea":
        hea = hea.with_suffix(".hea")
    rec = _rdrecord(hea)
    names = rec.sig_name or []
    leads = LEADS
    if reduced and len(names) != len(LEADS):
        signal, leads = standard_subset(_physical_mv(rec, hea), names, hea)
    else:
        signal = to_standard_order(_physical_mv(rec, hea), names, hea)
    meta = _comments(rec.comments or [])
    dx = [c for c in meta.get("dx", "").replace(";", ",").split(",") if c.strip()]
    record_id = hea.stem
    return Record(
        signal=check_signal(signal, hea, fs=float(rec.fs)),
        fs=float(rec.fs),
        leads=leads,
        record_id=record_id,
        patient_id=patient_id or record_id,
        site=site or site_of_challenge_record(record_id),
        source_format="wfdb",
        path=str(hea),
        codes=tuple(c.strip() for c in dx),
        code_system=detect_code_system(dx),
        age=_parse_age(meta.get("age")),
        sex=meta.get("sex"),
    )


def _check_signal_file_size(hea: Path, rec: wfdb.Record) -> None:  # a header is enough
    """A truncated signal file: wfdb may pad or read short without complaint; the size tells."""
    fmt_bits = {"16": 16, "212": 12, "80": 8, "24": 24, "32": 32, "61": 16, "160": 16}
    files = rec.file_name or []
    if not files or rec.sig_len is None:
        return
    by_file: dict[str, list[int]] = {}
    for f, fmt, offset in zip(files, rec.fmt or [], rec.byte_offset or [0] * len(files)):
        by_file.setdefault(f, []).append(fmt_bits.get(str(fmt), 0))
        by_file[f + "#offset"] = [int(offset or 0)]
    for f in set(files):
        bits = by_file[f]
        if 0 in bits:
            continue
        expected = by_file[f + "#offset"][0] + rec.sig_len * sum(bits) // 8
        actual = (hea.parent / f).stat().st_size
        if actual < expected:
            raise RecordError(hea.parent / f, f"signal file truncated: {actual} bytes, header implies {expected}")


def read_cpsc_mat(mat: Path | str, reference: dict[str, tuple[str, ...]] | None = None) -> Record:
    """Read an original CPSC2018 ``.mat`` (struct ``ECG``); labels from ``REFERENCE.csv`` beside it."""
    mat = Path(mat)
    try:
        content = scipy.io.loadmat(mat, squeeze_me=True, struct_as_record=False)
    except FileNotFoundError:
        raise RecordError(mat, "file not found") from None
    except Exception as exc:  # scipy raises ValueError/TypeError/OSError on truncated files
        raise RecordError(mat, f"not a readable MATLAB file ({type(exc).__name__}: {exc})") from None
    ecg = content.get("ECG")
    if ecg is None:
        raise RecordError(mat, "no struct 'ECG' in file (not an original CPSC2018 record)")
    data = getattr(ecg, "data", None)
    if data is None:
        raise RecordError(mat, "struct ECG has no field 'data'")
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2:
        raise RecordError(mat, f"ECG.data must be 2-D (12 x N), got shape {data.shape}")
    if data.shape[0] != 12 and data.shape[1] == 12:
        data = data.T
    if data.shape[0] != 12:
        raise RecordError(mat, f"expected 12 leads, got ECG.data of shape {data.shape}")
    if reference is None:
        reference = load_cpsc_reference(mat.parent / "REFERENCE.csv")
    record_id = mat.stem
    sex = getattr(ecg, "sex", None)
    return Record(
        signal=check_signal(data, mat, fs=500.0),
        fs=500.0,  # the original challenge: every record at 500 Hz (Liu et al. 2018)
        leads=LEADS,
        record_id=record_id,
        patient_id=record_id,
        site="CPSC2018",
        source_format="cpsc_mat",
        path=str(mat),
        codes=reference.get(record_id, ()),
        code_system="cpsc_number",
        age=_parse_age(str(getattr(ecg, "age", ""))),
        sex=str(sex) if sex is not None else None,
    )


def load_cpsc_reference(path: Path) -> dict[str, tuple[str, ...]]:
    """``REFERENCE.csv`` of the original challenge: record -> its 1-3 class numbers."""
    return dict(_load_cpsc_reference(str(path), path.stat().st_mtime if path.exists() else 0.0))


@lru_cache(maxsize=8)
def _load_cpsc_reference(path: str, _mtime: float) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not Path(path).exists():
        return ()
    rows = []
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            if not row or row[0].strip().lower() == "recording":
                continue
            rows.append((row[0].strip(), tuple(c.strip() for c in row[1:] if c.strip())))
    return tuple(rows)


def read_ptbxl(root: Path | str, ecg_id: int, *, rate: int = 500) -> Record:
    """Read PTB-XL recording ``ecg_id`` at 100 or 500 Hz from its native layout.

    Labels: every SCP statement in ``scp_codes`` counts, whatever its likelihood. PTB-XL gives
    diagnostic statements a likelihood (0-100) but writes 0.0 for most rhythm and form statements
    (AFIB, PAC, PVC are rhythm/form), so a likelihood threshold would drop them (Wagner et al. 2020).
    """
    root = Path(root)
    table = ptbxl_table(root)
    row = table.get(int(ecg_id))
    if row is None:
        raise RecordError(root / "ptbxl_database.csv", f"ecg_id {ecg_id} not in the table")
    if rate not in (100, 500):
        raise ValueError(f"PTB-XL rate must be 100 or 500, got {rate}")
    rel = row["filename_hr" if rate == 500 else "filename_lr"]
    hea = root / f"{rel}.hea"
    rec = _rdrecord(hea)
    signal = to_standard_order(_physical_mv(rec, hea), rec.sig_name or [], hea)
    codes = tuple(sorted(parse_scp_codes(row["scp_codes"], root / "ptbxl_database.csv")))
    pid = row.get("patient_id", "")
    return Record(
        signal=check_signal(signal, hea, fs=float(rec.fs)),
        fs=float(rec.fs),
        leads=LEADS,
        record_id=f"ptbxl-{int(ecg_id):05d}",
        patient_id=f"ptbxl-{int(float(pid))}" if pid else f"ptbxl-{int(ecg_id):05d}",
        site="PTB-XL",
        source_format="ptbxl",
        path=str(hea),
        codes=codes,
        code_system="scp",
        age=_parse_age(row.get("age")),
        sex={"0": "Male", "1": "Female"}.get(str(row.get("sex", "")).split(".")[0]),
    )


def parse_scp_codes(text: str, where: Path) -> dict[str, float]:
    try:
        value = ast.literal_eval(text) if text else {}
    except (ValueError, SyntaxError):
        raise RecordError(where, f"unreadable scp_codes {text!r}") from None
    if not isinstance(value, dict):
        raise RecordError(where, f"scp_codes is not a dict: {text!r}")
    return {str(k): float(v) for k, v in value.items()}


def ptbxl_table(root: Path) -> dict[int, dict[str, str]]:
    csv_path = Path(root) / "ptbxl_database.csv"
    if not csv_path.exists():
        raise RecordError(csv_path, "PTB-XL table not found")
    return _ptbxl_table(str(csv_path), csv_path.stat().st_mtime)


@lru_cache(maxsize=4)
def _ptbxl_table(path: str, _mtime: float) -> dict[int, dict[str, str]]:
    with open(path, newline="") as fh:
        return {int(float(r["ecg_id"])): r for r in csv.DictReader(fh)}


def read_mitbih(hea: Path | str) -> Record:
    """Read an MIT-BIH record: its own 2 leads at 360 Hz, and the reference beats from ``.atr``."""
    hea = Path(hea)
    rec = _rdrecord(hea)
    signal = _physical_mv(rec, hea)
    atr = hea.with_suffix(".atr")
    beats = None
    if atr.exists():
        try:
            ann = wfdb.rdann(str(hea.with_suffix("")), "atr")
        except Exception as exc:
            raise RecordError(atr, f"beat annotations cannot be read ({type(exc).__name__}: {exc})") from None
        beats = Beats(samples=np.asarray(ann.sample, dtype=np.int64), symbols=tuple(ann.symbol))
    return Record(
        signal=check_signal(signal, hea, fs=float(rec.fs)),
        fs=float(rec.fs),
        leads=tuple(rec.sig_name or []),
        record_id=f"mitbih-{hea.stem}",
        patient_id=f"mitbih-{hea.stem}",
        site="MIT-BIH",
        source_format="mitbih",
        path=str(hea),
        beats=beats,
    )


def read_any(path: Path | str) -> Record:
    """Read one file whatever its format (what the app and ``evaluate`` do with a single file)."""
    path = Path(path)
    if not path.exists():
        raise RecordError(path, "file not found")
    if path.suffix == ".mat" and not path.with_suffix(".hea").exists():
        return read_cpsc_mat(path)
    if path.suffix in (".mat", ".dat", ".hea"):
        hea = path.with_suffix(".hea")
        if _looks_like_mitbih(hea):
            return read_mitbih(hea)
        return read_wfdb(hea, reduced=True)
    raise RecordError(path, f"unsupported file type {path.suffix or '(none)'}; expected .hea, .mat or .dat")


def _looks_like_mitbih(hea: Path) -> bool:
    """A beat-annotated Holter-style record: a WFDB header with .atr annotations and fewer than 12 leads."""
    if not hea.with_suffix(".atr").exists():
        return False
    lines = [line for line in _header_text(hea) if line.strip() and not line.startswith("#")]
    try:
        return int(lines[0].split()[1]) < 12
    except (IndexError, ValueError):
        return False
