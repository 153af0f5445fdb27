#!/usr/bin/env bash
# One entry point for a fresh Debian/Ubuntu machine.
#   bash scripts/run.sh demo   set up, then run the main job on the bundled sample data
#                              (a display: napari with the plugin, sample loaded, training started;
#                               no display: the same pipeline headless, results in ./cryofire_demo)
#   bash scripts/run.sh test   set up, then run the whole test suite (GUI tests under Xvfb)
# It makes a virtual environment in .venv (override with CRYOFIRE_VENV) and, as root, installs the
# few Debian packages Qt needs; as another user it prints the exact apt line and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
shift || true
case "$mode" in demo|test|setup) ;; *) echo "usage: bash scripts/run.sh demo|test|setup [args...]" >&2; exit 2;; esac

APT_PKGS="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-randr0 libxcb-render-util0 \
libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1 libgl1-mesa-dri libdbus-1-3 \
libfontconfig1 libglib2.0-0"

need_apt() {
  command -v dpkg-query >/dev/null 2>&1 || return 1
  local p
  for p in $APT_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 0
  done
  return 1
}

if need_apt; then
  if [ "$(id -u)" = 0 ]; then
    echo "[cryofire] installing system packages for Qt/Xvfb (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $APT_PKGS >/dev/null
  else
    echo "[cryofire] missing system packages; run this once, then run this script again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y $APT_PKGS" >&2
    exit 1
  fi
fi

VENV="${CRYOFIRE_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[cryofire] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  # The CPU wheel of torch 2.13.0 lies on disk on our machines; elsewhere pip fetches it.
  echo "[cryofire] installing torch"
  "$VPY" -m pip install -q "torch==2.13.0" || "$VPY" -m pip install -q torch
fi
echo "[cryofire] installing cryofire-app and its dependencies"
"$VPY" -m pip install -q -e ".[test]"

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d /tmp/cryofire-xdg.XXXXXX)}"
chmod 700 "$XDG_RUNTIME_DIR" 2>/dev/null || true
unset QT_QPA_PLATFORM

case "$mode" in
  setup)
    echo "[cryofire] ready: $VENV/bin/cryofire --help" ;;
  demo)
    if [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; then
      exec "$VENV/bin/cryofire" gui --demo "$@"
    else
      out=cryofire_demo
      [ -e "$out" ] && out="cryofire_demo_$(date +%Y%m%d-%H%M%S)"   # never overwrite an earlier demo's results
      echo "[cryofire] no display: running the demo pipeline headless into ./$out"
      exec "$VENV/bin/cryofire" demo -o "$out" "$@"
    fi ;;
  test)
    # lint first (ruff, configured in pyproject.toml): a style fault fails the suite like a test would
    "$VPY" -m ruff check cryofire_app tests benchmarks
    # pytest-xvfb starts its own Xvfb; GUI tests run on a real Qt (xcb) display.
    set +e
    "$VPY" -m pytest -p xvfb -q -ra "$@"
    rc=$?
    set -e
    if [ $rc -eq 5 ]; then echo "[cryofire] pytest collected no tests" >&2; fi
    exit $rc ;;
esac
