#!/usr/bin/env bash
# Create .venv with the full g2sd stack (CPU ops).  Idempotent: a finished venv is left alone.
#
# Pins live in one place: requirements/pins.txt.  mmcv 2.1.0 has no wheel for torch 2.14, so it is
# built once from its PyPI sdist (CPU ops, -std=c++20 patch, CFLAGS=-g0, ~7 min on 2 cores) and the
# wheel is cached in $G2SD_WHEEL_CACHE (default ~/.cache/g2sd/wheels) so later venvs skip the compile.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
CACHE="${G2SD_WHEEL_CACHE:-$HOME/.cache/g2sd/wheels}"
PINS="$ROOT/requirements/pins.txt"
STAMP="$VENV/.g2sd-setup-done"

pin() { grep -E "^$1==" "$PINS" | head -n1; }

up_to_date() {
  [ -f "$STAMP" ] && [ "$STAMP" -nt "$PINS" ] && [ "$STAMP" -nt "$ROOT/setup.cfg" ] \
    && [ "$STAMP" -nt "${BASH_SOURCE[0]}" ]
}
up_to_date && exit 0
# One setup at a time on this machine (e.g. `make test` and `make demo` started together); the
# second waits, then finds the venv finished.
mkdir -p "$CACHE"
if command -v flock >/dev/null; then
  exec 9>"$CACHE/.setup.lock"
  flock 9
  up_to_date && exit 0
fi
if [ -x "$VENV/bin/python" ]; then
  echo "[setup] updating $VENV (pins, setup.cfg or this script changed, or an earlier run stopped)"
else
  echo "[setup] creating $VENV (first run on a fresh machine: ~10-12 min, mostly the mmcv compile)"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q "$(pin torch)" "$(pin torchvision)"
$PIP install -q "$(pin setuptools)" wheel ninja

MMCV_VER="$(pin mmcv | cut -d= -f3)"
WHL="$CACHE/mmcv-${MMCV_VER}-cp311-cp311-linux_x86_64.whl"
if [ ! -f "$WHL" ]; then
  echo "[setup] building mmcv ${MMCV_VER} with CPU ops (one time, cached in $CACHE)"
  BUILD="$(mktemp -d)"
  $PIP download -q --no-deps --no-binary :all: --no-build-isolation -d "$BUILD" "mmcv==${MMCV_VER}"
  tar xzf "$BUILD/mmcv-${MMCV_VER}.tar.gz" -C "$BUILD"
  # torch >= 2.10 headers need C++20; mmcv's setup.py hard-codes -std=c++17 after all user flags.
  sed -i "s/'-std=c++17'/'-std=c++20'/g" "$BUILD/mmcv-${MMCV_VER}/setup.py"
  env -u FORCE_CUDA MMCV_WITH_OPS=1 MAX_JOBS="$(nproc)" CFLAGS=-g0 \
    $PIP wheel -q --no-cache-dir --no-build-isolation --no-deps -w "$BUILD/dist" "$BUILD/mmcv-${MMCV_VER}"
  cp "$BUILD/dist/mmcv-${MMCV_VER}-"*.whl "$WHL.tmp" && mv "$WHL.tmp" "$WHL"
  rm -rf "$BUILD"
fi
$PIP install -q -r "$PINS"  "$WHL"
# No build isolation: the venv's pinned setuptools builds the editable install (offline-safe).
$PIP install -q --no-deps --no-build-isolation -e "$ROOT"
$PIP check
# Real images for the demo and tests (offline): Debian's Fashion-MNIST.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  if [ "$(id -u)" = 0 ] && { apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
      { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; }
  then
    echo "[setup] installed dataset-fashion-mnist"
  elif [ -n "${CI:-}" ]; then
    echo "[setup] ERROR: could not install Debian's dataset-fashion-mnist (needed by the tests)" >&2
    exit 1
  else
    echo "[setup] WARNING: install Debian's dataset-fashion-mnist" \
      "(sudo apt-get install dataset-fashion-mnist); tests that need it are skipped"
  fi
fi
touch "$STAMP"
echo "[setup] done: $VENV"
