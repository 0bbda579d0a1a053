"""``python -m cpsc2018.download --source cpsc2018|ptbxl|cinc2021 --dest DIR [--base-url URL] [--limit N]``

Downloads a public database as PhysioNet lays it out, verified file by file against the database's
published ``SHA256SUMS.txt``. Resumable: a file whose checksum already matches is skipped, a partial
download (``<file>.part``) continues with an HTTP Range request, and a file appears under its final
name only after its checksum verified; a ``.part`` that is already complete (a run killed after the
last byte, before the check) is verified and finished, and one that is longer than the file or wrong
is discarded and fetched again. ``--limit N`` fetches the first N records only (for demos).

File names come from the server's listing, so they are checked before anything is downloaded: a
listing with any name that is absolute, has a drive letter, a backslash, a ``..`` component or
otherwise lands outside ``--dest`` is refused as a whole (a mirror that serves such a listing is
broken or hostile). The check is lexical: links the user placed inside ``--dest`` are followed, the
server cannot create any.

Sources (PhysioNet, CC BY 4.0):

* ``cpsc2018``: the CPSC2018 part (``training/cpsc_2018/``) of the PhysioNet/CinC Challenge 2020 data,
  6,877 records. Liu et al., J. Med. Imaging Health Inform. 8:1368 (2018); Perez Alday et al.,
  Physiol. Meas. 41:124003 (2020).
* ``cinc2021``: the PhysioNet/CinC Challenge 2021 training data (``training/``), all its sources.
  Reyna et al., Computing in Cardiology 48 (2021).
* ``ptbxl``: PTB-XL 1.0.3, 21,799 records at 100 and 500 Hz. Wagner et al., Sci. Data 7:154 (2020).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm import tqdm

SOURCES: dict[str, dict[str, str]] = {
    "cpsc2018": {"url": "https://physionet.org/files/challenge-2020/1.0.2/", "prefix": "training/cpsc_2018/"},
    "cinc2021": {"url": "https://physionet.org/files/challenge-2021/1.0.3/", "prefix": "training/"},
    "ptbxl": {"url": "https://physionet.org/files/ptb-xl/1.0.3/", "prefix": ""},
}
SUMS_FILE = "SHA256SUMS.txt"
RETRIES = 4
CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A download failed; the message names the URL or file and the problem."""


class _RangeNotSatisfiable(DownloadError):
    """HTTP 416 to a resume request: the ``.part`` is already as long as the file (or longer)."""


@dataclass
class DownloadSummary:
    downloaded: int = 0
    skipped: int = 0
    bytes: int = 0


def _open(url: str, start: int = 0, timeout: float = 30.0):
    req = urllib.request.Request(url, headers={"User-Agent": "ecg-lite-download"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    last: Exception | None = None
    for attempt in range(RETRIES):
        try:
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and start:
                raise _RangeNotSatisfiable(f"{url}: HTTP 416 for Range bytes={start}-") from None
            if exc.code < 500:  # 404, 403...: asking again will not help
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            last = exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            last = exc
        time.sleep(0.5 * 2**attempt)  # back off: 0.5, 1, 2, 4 s
    reason = getattr(last, "reason", last)
    raise DownloadError(
        f"{url}: cannot be reached after {RETRIES} tries ({reason}). Check the network connection, or download "
        "the records yourself and point ECG_DATA (or --data) at their folder"
    )


def parse_sums(text: str) -> dict[str, str]:
    """``<sha256>  <relative path>`` lines -> {path: sha256}."""
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[parts[1].lstrip("*").strip()] = parts[0].lower()
    return sums


def unsafe_reason(name: str, dest: Path) -> str | None:
    """Why ``name`` (from a listing) must not be written under ``dest``, or None if it is safe."""
    if not name or name in (".", "./"):
        return "empty name"
    if any(ord(c) < 32 for c in name):
        return "control character in the name"
    if "\\" in name:
        return "backslash in the name"
    if PureWindowsPath(name).drive:
        return "drive letter or UNC share"
    if PurePosixPath(name).is_absolute():
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' component"
    root = os.path.normpath(os.path.abspath(dest))
    target = os.path.normpath(os.path.join(root, name))
    if os.path.commonpath([root, target]) != root or target == root:
        return "resolves outside the destination"
    return None


def check_names(names: list[str] | dict[str, str], dest: Path, where: str) -> None:
    """Refuse the whole listing if any name is unsafe; the error names every offending entry."""
    bad = [(n, r) for n in names if (r := unsafe_reason(n, dest)) is not None]
    if bad:
        shown = "; ".join(f"{n} ({r})" for n, r in bad[:10])
        more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DownloadError(f"{where}: unsafe file name(s) refused, nothing was downloaded: {shown}{more}")


def select(sums: dict[str, str], source: str, limit: int | None) -> list[str]:
    """The files of ``source`` (all, or those of its first ``limit`` records, sorted)."""
    prefix = SOURCES[source]["prefix"]
    files = sorted(p for p in sums if p.startswith(prefix) and p != SUMS_FILE)
    if limit is None:
        return files
    if source == "ptbxl":
        meta = [p for p in files if not p.startswith(("records100/", "records500/"))]
        ids = sorted({PurePosixPath(p).name.split("_")[0] for p in files if p.startswith("records100/") and p.endswith(".hea")})[:limit]
        keep = {i for i in ids}
        recs = [p for p in files if p.startswith(("records100/", "records500/")) and PurePosixPath(p).name.split("_")[0] in keep]
        return meta + recs
    records = sorted({str(PurePosixPath(p).with_suffix("")) for p in files if p.endswith(".hea")})[:limit]
    keep = set(records)
    other = [p for p in files if not p.endswith((".hea", ".mat", ".dat")) and PurePosixPath(p).parent == PurePosixPath(prefix.rstrip("/"))]
    return [p for p in files if str(PurePosixPath(p).with_suffix("")) in keep] + other


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: Path, expected: str, bar: tqdm) -> int:
    """Download one file with resume; verify; rename into place. Returns bytes transferred."""
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, start)
    except _RangeNotSatisfiable:
        # The .part is at least as long as the file: a run killed after the last byte but before the
        # check and rename. Finish it if it verifies; otherwise it is junk: start again from byte 0.
        if sha256(part) == expected:
            part.replace(dest)
            return 0
        part.unlink(missing_ok=True)
        start = 0
        resp = _open(url, 0)
    if start and resp.status != 206:  # the server ignored Range: start again
        start = 0
    got = 0
    with resp, open(part, "ab" if start else "wb") as fh:
        while block := resp.read(CHUNK):
            fh.write(block)
            got += len(block)
            bar.update(len(block))
    if sha256(part) != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{dest}: checksum mismatch against {SUMS_FILE} (downloaded from {url}); the partial file was removed")
    part.replace(dest)
    return got


def download(source: str, dest: Path, base_url: str | None = None, limit: int | None = None, progress: bool = True) -> DownloadSummary:
    if source not in SOURCES:
        raise DownloadError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    base = (base_url or SOURCES[source]["url"]).rstrip("/") + "/"
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        probe = dest / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DownloadError(f"{dest}: destination not writable ({exc.strerror})") from None
    with _open(base + SUMS_FILE) as resp:
        sums = parse_sums(resp.read().decode("utf-8", "replace"))
    if not sums:
        raise DownloadError(f"{base}{SUMS_FILE}: no checksum lines found")
    check_names(list(sums), dest, f"{base}{SUMS_FILE}")  # all of them, before anything is fetched
    files = select(sums, source, limit)
    if not files:
        raise DownloadError(f"{base}{SUMS_FILE} lists no file of source {source}")
    summary = DownloadSummary()
    with tqdm(desc=f"{source} ({len(files)} files)", unit="B", unit_scale=True, disable=not progress) as bar:
        for rel in files:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() and sha256(target) == sums[rel]:
                summary.skipped += 1
                continue
            summary.bytes += fetch(base + rel, target, sums[rel], bar)
            summary.downloaded += 1
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cpsc2018.download", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", choices=sorted(SOURCES), required=True)
    p.add_argument("--dest", type=Path, required=True, help="folder to download into (created)")
    p.add_argument("--base-url", default=None, help="mirror of the database (default: PhysioNet)")
    p.add_argument("--limit", type=int, default=None, help="only the first N records (demos)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    try:
        s = download(args.source, args.dest, args.base_url, args.limit, progress=sys.stderr.isatty())
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.source}: {s.downloaded} files downloaded ({s.bytes / 1e6:.1f} MB), {s.skipped} already present and verified, in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
