"""`make apt-test` (.ci/apt-test.sh), the first step of `make test` on a fresh machine, run for real against
stand-in tools.

The recipe is executed by make exactly as a user runs it; only apt-get, dpkg-query, id and sudo are
stand-ins on PATH that log what they were asked (the real install runs in CI with FORCE=1 and is then
used by the app's screen test). This catches the bug where `$SUDO VAR=value apt-get` with SUDO empty
(root) ran `VAR=value` as a command and no test ever executed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("bash", "sh", "make", "env", "grep", "cat", "echo", "printf", "chmod", "true")


def _stand_ins(
    tmp: Path, *, uid: int, installed: bool, xvfb_run: bool | None = None, appears_on: str = "install",
    without: tuple[str, ...] = (),
) -> dict[str, str]:
    """A PATH holding the real shell tools and logging stand-ins for the package tools."""
    bin_ = tmp / "bin"
    bin_.mkdir()
    for tool in TOOLS:
        real = shutil.which(tool)
        if real:
            (bin_ / tool).symlink_to(real)
    log = tmp / "log"
    scripts = {
        # The install "works": it logs its environment and arguments and makes xvfb-run appear (on any
        # install, or only on --reinstall: dpkg believes xvfb is there while its files are gone).
        # Like the real one, it refuses a user who is neither root nor behind sudo (STANDIN_SUDO).
        "apt-get": f'if [ "$(id -u)" != 0 ] && [ -z "$STANDIN_SUDO" ]; then echo "E: Could not open lock file - are you root?" >&2; exit 100; fi\n'
        f'echo "apt-get DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >> {log}\n'
        f'case "$*" in *{appears_on}*) printf "#!/bin/sh\\nexit 0\\n" > {bin_}/xvfb-run; chmod +x {bin_}/xvfb-run;; esac\n',
        "dpkg-query": f'echo "install ok installed"; exit 0\n' if installed else "exit 1\n",
        "id": f"echo {uid}\n",
        # -n (never ask for a password) is accepted and not logged; the command runs as "root".
        "sudo": f'[ "$1" = -n ] && shift\necho "sudo $*" >> {log}\nSTANDIN_SUDO=1 exec "$@"\n',
    }
    if installed if xvfb_run is None else xvfb_run:
        scripts["xvfb-run"] = "exit 0\n"
    for name in without:  # a machine that lacks this tool
        scripts.pop(name)
    for name, body in scripts.items():
        path = bin_ / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "FORCE")}
    env["PATH"] = str(bin_)
    return env


def _run(tmp: Path, *args: str, uid: int, installed: bool, **kw) -> tuple[subprocess.CompletedProcess, str]:
    env = _stand_ins(tmp, uid=uid, installed=installed, **kw)
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "apt-test", *args],
                          env=env, capture_output=True, text=True, timeout=60)
    log = tmp / "log"
    return proc, log.read_text() if log.exists() else ""


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("uid", [0, 1000], ids=["root", "user-with-sudo"])
def test_apt_test_installs_when_packages_are_missing(tmp_path, uid):
    proc, log = _run(tmp_path, uid=uid, installed=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "command not found" not in proc.stderr
    installs = [line for line in log.splitlines() if line.startswith("apt-get") and " install " in f" {line} "]
    assert installs, log
    assert "DEBIAN_FRONTEND=noninteractive" in installs[0]
    for pkg in ("xvfb", "xauth", "libmtdev1", "libgl1-mesa-dri"):
        assert pkg in installs[0]
    assert ("sudo env DEBIAN_FRONTEND=noninteractive apt-get" in log) == (uid != 0), log
    assert (tmp_path / "bin" / "xvfb-run").exists()
    assert "could not install" not in proc.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_apt_test_force_installs_even_when_everything_is_there(tmp_path):
    (tmp_path / "plain").mkdir()
    proc, log = _run(tmp_path / "plain", uid=0, installed=True)
    assert proc.returncode == 0, proc.stderr
    assert log == "", "nothing missing and no FORCE: nothing to install"
    (tmp_path / "forced").mkdir()
    proc, log = _run(tmp_path / "forced", "FORCE=1", uid=0, installed=True)
    assert proc.returncode == 0, proc.stderr
    assert "apt-get DEBIAN_FRONTEND=noninteractive -o DPkg::Lock::Timeout=300 install -y -qq xvfb" in log, log


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_apt_test_reinstalls_xvfb_when_dpkg_has_it_but_xvfb_run_is_gone(tmp_path):
    # dpkg records every package as installed, xvfb-run is missing, and a plain install is a no-op.
    proc, log = _run(tmp_path, uid=0, installed=True, xvfb_run=False, appears_on="--reinstall")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "install -y -qq --reinstall xvfb" in log, log
    assert (tmp_path / "bin" / "xvfb-run").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_apt_test_goes_on_when_apt_get_update_fails(tmp_path):
    env = _stand_ins(tmp_path, uid=0, installed=False)
    apt = tmp_path / "bin" / "apt-get"
    apt.write_text(apt.read_text().replace("#!/bin/sh\n", '#!/bin/sh\ncase "$*" in *update*) exit 100;; esac\n', 1))
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "apt-test"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "update failed" in proc.stderr  # warnings and errors go to stderr, where make shows them
    assert (tmp_path / "bin" / "xvfb-run").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(
    ("uid", "without", "says"),
    # Without sudo, apt-get still runs (its own "are you root?" shows), and the target fails naming why.
    [(1000, ("sudo",), "not root and sudo not found"), (0, ("apt-get",), "apt-get not found")],
    ids=["user-without-sudo", "no-apt-get"],
)
def test_apt_test_names_the_missing_tool(tmp_path, uid, without, says):
    proc, log = _run(tmp_path, uid=uid, installed=False, without=without)
    assert proc.returncode != 0
    assert says in proc.stderr and "xvfb" in proc.stderr, proc.stdout + proc.stderr  # beside make's "Error 1"
    assert "unbound variable" not in proc.stderr and "command not found" not in proc.stderr
    if without == ("sudo",):  # it got as far as apt-get install, whose own refusal is shown
        assert "are you root?" in proc.stderr and "apt-get install xvfb" in proc.stderr, proc.stderr


def test_ci_forces_the_install_step():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test FORCE=1" in ci
