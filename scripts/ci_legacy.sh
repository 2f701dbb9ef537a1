#!/usr/bin/env bash
# CI, second environment: SpikingJelly 0.0.0.0.14 (the CuPy generation). A fresh virtual
# environment, `pip install -e .` plus spikingjelly==0.0.0.0.14, only tests/legacy, loud failure
# (pytest's exit 5, "nothing collected", fails too: it means the legacy tests were skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
VENV="${LEGACY_VENV:-.ci-venv-legacy}"
# LEGACY_REUSE=1 keeps an environment this script built before (local runs); CI builds afresh.
if [ "${LEGACY_REUSE:-0}" != "1" ] || [ ! -x "$VENV/bin/python" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  . "$VENV/bin/activate"
  python -m pip install -q --upgrade pip
  # 0.0.0.0.14 declares no torch pin; it imports on Python 3.11. Its model zoo imports
  # torchvision at module level, so torch and torchvision must be a matching pair (with
  # torch 2.13 pip picks torchvision 0.28 for CUDA and `import torchvision` fails with
  # "operator torchvision::nms does not exist"): torch 2.14.1 with torchvision 0.29.1.
  python -m pip install -q -e . "torch==2.14.1" "torchvision==0.29.1" "spikingjelly==0.0.0.0.14" \
    pytest
else
  . "$VENV/bin/activate"
fi
python - <<'PY'
from importlib.metadata import version
v = version("spikingjelly")
assert v == "0.0.0.0.14", f"CI legacy: expected spikingjelly 0.0.0.0.14, got {v}"
import torchvision  # noqa: F401  (the zoo imports it: fail here, loudly, on a mismatched pair)
from spikingjelly.activation_based.model import parametric_lif_net, sew_resnet, spiking_resnet, spiking_vgg  # noqa: F401
PY
set +e
python -m pytest -q tests/legacy -W ignore::DeprecationWarning
status=$?
set -e
if [ "$status" -eq 5 ]; then echo "CI legacy: no tests were collected" >&2; exit 1; fi
exit "$status"
