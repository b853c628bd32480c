#!/usr/bin/env bash
# Create (or reuse) the project virtualenv and install everything the project needs.
# Idempotent: reinstalls only when scripts/requirements.txt, setup.py or setup.cfg changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" - <<'PY'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"ros_seqplanner's ROS 2 wheels are cp311: this venv has Python {sys.version.split()[0]}")
PY
stamp="$VENV/.seqplanner-installed"
want=$(cat scripts/requirements.txt setup.py setup.cfg | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] installing dependencies into $VENV (first run takes a few minutes)"
"$VENV/bin/pip" install -q --upgrade pip
# torch first and pinned: 2.13.0 is the CPU build; an unpinned torch would pull GBs of CUDA.
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -r scripts/requirements.txt
"$VENV/bin/pip" install -q --no-deps -e .
echo "$want" > "$stamp"
echo "[setup] done"
