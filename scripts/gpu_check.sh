#!/usr/bin/env bash
# One prepared GPU check (< 8 minutes), for a machine with PyTorch, Triton and CuPy but no
# network. Prepare .whl/ where there is network (scripts/gpu_wheels.sh) and carry it along.
#   1. gpu-marked tests, SpikingJelly 2.0 environment (torch backend vs the oracle on CUDA)
#   2. gpu-marked tests, SpikingJelly 0.0.0.0.14 environment (its CuPy-generated SAF kernels)
#   3. the scan bandwidth benchmark (benchmarks/gpu_scan_bench.py), both environments
#   4. CIFAR-scale benchmark: OTTT VGG full width, batch 128, T in {6,16}: SAF-E online,
#      SAF-E multi-step, SAF-F vs SpikingJelly BPTT, OTTT, ReLU bound (time and
#      max_memory_allocated) via benchmarks/bench.py
# Results: benchmarks/results/ (and a copy under $OUT when set). Exit status: first failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RES=benchmarks/results; mkdir -p "$RES"
LOG="$RES/gpu_check.log"; : > "$LOG"
status=0
note() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
step() { local t=$1; shift; note "$*"; timeout "$t" "$@" 2>&1 | tee -a "$LOG"; local rc=${PIPESTATUS[0]}
         [ "$rc" -ne 0 ] && { note "FAILED rc=$rc: $*"; [ "$status" -eq 0 ] && status=$rc; }; return 0; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, sys.version)" | tee -a "$LOG"
python3 -c "import cupy; print('cupy', cupy.__version__)" 2>&1 | tee -a "$LOG"

mkvenv() {  # $1 venv dir, $2.. wheels to add offline (the system torch/triton/cupy are reused)
  local v=$1; shift
  python3 -m venv --system-site-packages "$v" && "$v/bin/pip" install -q --no-index --no-deps \
    --find-links .whl --find-links .whl/legacy "$@" && "$v/bin/pip" install -q --no-index --no-deps \
    --no-build-isolation -e . 2>&1 | tail -2
}
V2=/tmp/saf-gpu-sj2; V14=/tmp/saf-gpu-sj014
if ! python3 -c "import spikingjelly.activation_based._ops" 2>/dev/null; then
  python3 -m venv --system-site-packages "$V2"
  step 120 "$V2/bin/pip" install -q --no-index --find-links .whl h5py loguru tensorboard
  step 60 "$V2/bin/pip" install -q --no-index --no-deps --find-links .whl spikingjelly==2.0.0
  step 60 "$V2/bin/pip" install -q --no-index --no-deps --no-build-isolation -e .
else python3 -m venv --system-site-packages "$V2"; "$V2/bin/pip" install -q --no-deps --no-build-isolation -e . | tail -1; fi
step 120 mkvenv "$V14" spikingjelly==0.0.0.0.14

PY2="$V2/bin/python"; PY14="$V14/bin/python"
step 150 "$PY2" -m pytest -q -m gpu tests/test_kernels.py -rs --junitxml="$RES/gpu_tests_sj2.xml"
step 120 "$PY14" -m pytest -q -m gpu tests/legacy -rs -W ignore::DeprecationWarning --junitxml="$RES/gpu_tests_sj014.xml"
step 60 "$PY14" benchmarks/gpu_scan_bench.py --T 6,16
if [ -f benchmarks/bench.py ]; then
  step 330 "$PY2" benchmarks/bench.py --net vgg --width-div 1 --batch 128 --T 6,16 \
      --methods bptt,ottt,saf_e_online,saf_e_multi,saf_f,relu --repeats 3 --warmup 1 \
      --device cuda --name vgg_b128_cuda --no-plot
else
  note "benchmarks/bench.py missing: no CIFAR-scale benchmark"; status=1
fi
if [ -n "${OUT:-}" ]; then cp -r "$RES" "$OUT/" 2>/dev/null; fi
note "gpu_check done, status $status"
exit "$status"
