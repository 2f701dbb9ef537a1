#!/usr/bin/env bash
# CI, second environment: SpikingJelly 0.0.0.0.14 (the CuPy generation). A fresh virtual
# environment, `pip install -e .` plus spikingjelly==0.0.0.0.14, only tests/legacy, loud failure
# (pytest's exit 5, "nothing collected", fails too: it means the legacy tests were skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
VENV="${LEGACY_VENV:-.ci-venv-legacy}"
rm -rf "$VENV"
python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
# torch 2.13 (CPU build on CI): 0.0.0.0.14 declares no torch pin; it imports on Python 3.11.
python -m pip install -q -e . "torch==2.13.0" "spikingjelly==0.0.0.0.14" pytest
python - <<'PY'
from importlib.metadata import version
v = version("spikingjelly")
assert v == "0.0.0.0.14", f"CI legacy: expected spikingjelly 0.0.0.0.14, got {v}"
PY
set +e
python -m pytest -q tests/legacy -W ignore::DeprecationWarning
status=$?
set -e
if [ "$status" -eq 5 ]; then echo "CI legacy: no tests were collected" >&2; exit 1; fi
exit "$status"
