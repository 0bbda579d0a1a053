"""The download command against a PhysioNet-like folder served on 127.0.0.1 (real records)."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
from functools import partial
from pathlib import Path

import pytest

from cpsc2018.download import DownloadError, main

RANGE_REQUESTS: list[str] = []


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=N-`` support (what PhysioNet's server offers)."""

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().do_GET()
        RANGE_REQUESTS.append(self.path)
        start = int(rng.split("=")[1].split("-")[0])
        size = path.stat().st_size
        if start >= size:  # RFC 9110 15.5.17: a range starting at or past the end is not satisfiable
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()[start:]
        self.send_response(206)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{path.stat().st_size}")
        self.end_headers()
        self.wfile.write(data)


def _sums(root: Path) -> None:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}" for p in sorted(root.rglob("*")) if p.is_file()]
    (root / "SHA256SUMS.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture()
def server(tmp_path, data_dir):
    """A challenge-2020-like tree with 3 CPSC records and a PTB-XL-like tree with 3 recordings."""
    site = tmp_path / "site"
    g1 = site / "challenge" / "training" / "cpsc_2018" / "g1"
    g1.mkdir(parents=True)
    for rec in ("A0001", "A0002", "A0003"):
        for ext in (".hea", ".mat"):
            shutil.copy(data_dir / "cpsc2018" / f"{rec}{ext}", g1)
    _sums(site / "challenge")
    ptb = site / "ptbxl"
    ptb.mkdir()
    shutil.copy(data_dir / "ptbxl" / "ptbxl_database.csv", ptb)
    for sub, suffix in (("records100", "lr"), ("records500", "hr")):
        (ptb / sub / "00000").mkdir(parents=True)
        for i in (1, 2, 3):
            for ext in (".hea", ".dat"):
                shutil.copy(data_dir / "ptbxl" / sub / "00000" / f"{i:05d}_{suffix}{ext}", ptb / sub / "00000")
    _sums(ptb)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RANGE_REQUESTS.clear()
    yield site, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_full_download_verifies_and_second_run_skips(server, tmp_path, capsys):
    site, url = server
    dest = tmp_path / "dest"
    assert main(["--source", "cpsc2018", "--dest", str(dest), "--base-url", f"{url}/challenge"]) == 0
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert len(got) == 6 and "training/cpsc_2018/g1/A0001.mat" in got
    for rel in got:
        assert (dest / rel).read_bytes() == (site / "challenge" / rel).read_bytes()
    assert "6 files downloaded" in capsys.readouterr().out


def test_second_run_downloads_nothing(server, tmp_path, capsys):
    _, url = server
    dest = tmp_path / "dest"
    main(["--source", "cpsc2018", "--dest", str(dest), "--base-url", f"{url}/challenge"])
    capsys.readouterr()
    assert main(["--source", "cpsc2018", "--dest", str(dest), "--base-url", f"{url}/challenge"]) == 0
    out = capsys.readouterr().out
    assert "0 files downloaded" in out and "6 already present and verified" in out


def _leave_part(site, dest, make_bytes) -> tuple[str, bytes, object]:
    """A ``.part`` of A0002.mat as a killed run leaves it: (relative path, the served bytes, the .part path)."""
    rel = "training/cpsc_2018/g1/A0002.mat"
    full = (site / "challenge" / rel).read_bytes()
    part = dest / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(make_bytes(full))
    return rel, full, part


def test_resume_from_partial_file_uses_range(server, tmp_path):
    site, url = server
    dest = tmp_path / "dest"
    rel, full, part = _leave_part(site, dest, lambda full: full[: len(full) // 2])
    assert main(["--source", "cpsc2018", "--dest", str(dest), "--base-url", f"{url}/challenge"]) == 0
    assert (dest / rel).read_bytes() == full
    assert not part.exists()
    assert any(r.endswith("A0002.mat") for r in RANGE_REQUESTS)


def test_checksum_mismatch_is_an_error_and_leaves_no_file(server, tmp_path, capsys):
    site, url = server
    served = site / "challenge" / "training" / "cpsc_2018" / "g1" / "A0003.mat"
    served.write_bytes(served.read_bytes()[:-10] + b"corrupted!")  # after the sums were written
    dest = tmp_path / "dest"
    assert main(["--source", "cpsc2018", "--dest", str(dest), "--base-url", f"{url}/challenge"]) == 2
    err = capsys.readouterr().err
    assert "A0003.mat" in err and "checksum mismatch" in err
    assert not (dest / "training/cpsc_2018/g1/A0003.mat").exists()
    assert not (dest / "training/cpsc_2018/g1/A0003.mat.part").exists()


def test_limit_fetches_exactly_n_records(server, tmp_path):
    _, url = server
    dest = tmp_path / "dest"
    assert main(["--source", "cpsc2018", "--dest", str(dest), "--base-url", f"{url}/challenge", "--limit", "2"]) == 0
    heads = sorted(p.name for p in dest.rglob("*.hea"))
    assert heads == ["A0001.hea", "A0002.hea"]
    assert len(list(dest.rglob("*.mat"))) == 2


def test_ptbxl_limit_takes_both_rates_and_the_table(server, tmp_path):
    _, url = server
    dest = tmp_path / "dest"
    assert main(["--source", "ptbxl", "--dest", str(dest), "--base-url", f"{url}/ptbxl", "--limit", "2"]) == 0
    assert (dest / "ptbxl_database.csv").exists()
    assert sorted(p.name for p in dest.rglob("*.hea")) == ["00001_hr.hea", "00001_lr.hea", "00002_hr.hea", "00002_lr.hea"]


def test_unreachable_or_missing_gives_exit_2_naming_the_url(server, tmp_path, capsys):
    _, url = server
    assert main(["--source", "cpsc2018", "--dest", str(tmp_path / "d"), "--base-url", f"{url}/nothing-here"]) == 2
    err = capsys.readouterr().err
    assert f"{url}/nothing-here/SHA256SUMS.txt" in err and "404" in err


def test_complete_part_file_left_by_a_killed_run_is_finished(server, tmp_path):
    # Killed after the last byte but before the checksum and rename: the server answers 416.
    site, url = server
    dest = tmp_path / "dest"
    rel, full, part = _leave_part(site, dest, lambda full: full)
    assert main(["--source", "cpsc2018", "--dest", str(dest), "--base-url", f"{url}/challenge"]) == 0
    assert (dest / rel).read_bytes() == full
    assert not part.exists()
    assert any(r.endswith("A0002.mat") for r in RANGE_REQUESTS)


def test_oversized_wrong_part_file_is_discarded_and_downloaded_again(server, tmp_path):
    # A .part at least as long as the file but with other bytes: 416, checksum fails, start from 0.
    site, url = server
    dest = tmp_path / "dest"
    rel, full, part = _leave_part(site, dest, lambda full: b"x" * (len(full) + 5))
    assert main(["--source", "cpsc2018", "--dest", str(dest), "--base-url", f"{url}/challenge"]) == 0
    assert (dest / rel).read_bytes() == full
    assert not part.exists()


class HostileHandler(http.server.BaseHTTPRequestHandler):
    """A server that lists unsafe names and answers every path with content (as a hostile mirror would)."""

    listing = b""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = self.listing if self.path.endswith("/SHA256SUMS.txt") else PAYLOAD
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


PAYLOAD = b"escaped\n"


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("ptbxl", "../escaped.txt"),
        ("ptbxl", "ABSOLUTE"),  # replaced by an absolute path under tmp_path
        ("cinc2021", "training/../../x"),
        ("ptbxl", "records100\\..\\..\\win.txt"),
        ("ptbxl", "C:/win.txt"),
    ],
)
def test_listing_with_unsafe_names_is_refused_before_any_download(tmp_path, source, bad, capsys):
    outside = tmp_path / "outside-abs.txt"
    if bad == "ABSOLUTE":
        bad = str(outside)
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    good = "training/ok.hea" if source == "cinc2021" else "ptbxl_database.csv"
    listing = f"{digest}  {good}\n{digest}  {bad}\n".encode()
    handler = type("Hostile", (HostileHandler,), {"listing": listing})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    dest = tmp_path / "a" / "b" / "dest"
    try:
        code = main(["--source", source, "--dest", str(dest), "--base-url", f"http://127.0.0.1:{httpd.server_address[1]}"])
    finally:
        httpd.shutdown()
    err = capsys.readouterr().err
    written = sorted(str(p) for p in tmp_path.rglob("*") if p.is_file())
    assert not written, f"files written: {written}"  # not even the good file: refused before downloading
    assert code == 2
    assert bad in err and "unsafe" in err
    assert "Traceback" not in err


def test_unsafe_name_error_is_a_download_error_naming_every_entry(tmp_path):
    from cpsc2018.download import check_names

    with pytest.raises(DownloadError, match=r"\.\./a.*training/\.\./\.\./b"):
        check_names(["ok/x.hea", "../a", "training/../../b"], tmp_path, "http://127.0.0.1/SHA256SUMS.txt")
