"""The download command against a PhysioNet-like folder served on 127.0.0.1 (real records)."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
from functools import partial
from pathlib import Path

import pytest

from cpsc2018.download import main

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


def test_resume_from_partial_file_uses_range(server, tmp_path):
    site, url = server
    dest = tmp_path / "dest"
    rel = "training/cpsc_2018/g1/A0002.mat"
    full = (site / "challenge" / rel).read_bytes()
    part = dest / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(full[: len(full) // 2])
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
