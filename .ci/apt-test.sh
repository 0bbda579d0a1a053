#!/usr/bin/env bash
# System packages the tests need (called by `make apt-test`): a virtual X screen for the Kivy app (xvfb,
# xauth; Mesa for its OpenGL) and libmtdev1, whose absence makes Kivy print a harmless but alarming error.
#
# Installs when a package is missing or when xvfb-run is not on PATH, and always with FORCE=1 (.ci/run
# passes it, so CI runs the install commands on every run). As root, or through sudo.
# - `env` carries DEBIAN_FRONTEND: after an empty $SUDO a bare VAR=value word would be taken as the command.
# - dpkg can record a package as installed while its files are gone (xvfb-run deleted by hand, a trimmed
#   image): a plain install is then a no-op, so a still-missing xvfb-run gets `--reinstall`.
# - A failing `apt-get update` (one unreachable source) does not stop the install from the lists at hand.
# No `set -u`: bash before 4.4 calls an empty array unbound, and the script uses arrays that may be empty.
PACKAGES=(xvfb xauth libmtdev1 libgl1-mesa-dri)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v xvfb-run >/dev/null || missing+=(xvfb-run)
if [ "${FORCE:-}" != 1 ] && [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "apt-test: installing ${PACKAGES[*]}${missing[*]:+ (missing: ${missing[*]})}"
# Every problem goes to stderr, where make prints it right above its "Error 1".
fail() { echo "apt-test: $*" >&2; exit 1; }
if ! command -v apt-get >/dev/null; then
  fail "apt-get not found: install ${PACKAGES[*]} with this system's package manager, then rerun"
fi
# Root: apt-get directly. Otherwise sudo, without a password prompt (-n: CI has no terminal). Without
# either, apt-get still runs: its own error (lock file, permission) says what is wrong, and then so do we.
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "apt-test: not root and sudo not found (or it asks for a password): running apt-get as $(id -un) anyway; the install needs root" >&2
  fi
fi
# A fresh machine often runs apt at boot (unattended upgrades): wait up to 5 min for its lock instead of failing.
apt() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; }

apt update -qq || echo "apt-test: apt-get update failed; installing from the package lists at hand" >&2
if ! apt install -y -qq "${PACKAGES[@]}" >/dev/null; then
  fail "apt-get install ${PACKAGES[*]} failed: it needs root (or sudo without a password) and a Debian/Ubuntu package mirror; as root: apt-get install -y ${PACKAGES[*]}"
fi
if ! command -v xvfb-run >/dev/null; then
  echo "apt-test: xvfb is installed but xvfb-run is missing: reinstalling xvfb"
  apt install -y -qq --reinstall xvfb >/dev/null || fail "apt-get install --reinstall xvfb failed"
fi
command -v xvfb-run >/dev/null || fail "xvfb-run still not found after the install"
