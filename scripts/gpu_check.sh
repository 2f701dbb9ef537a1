#!/usr/bin/env bash
# One GPU check in one command, offline, under 8 minutes, on a machine with Python, PyTorch,
# Triton and CuPy installed (no virtual environments). Carry .whl/ (scripts/gpu_wheels.sh:
# pure-Python wheels only); they are installed with `pip install --no-deps --target` into
# $SITE/<group> and put on PYTHONPATH, one SpikingJelly generation at a time.
#
#   bash scripts/gpu_check.sh              # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run    # anywhere: every step that needs no CUDA (CI)
#
# Steps, each under its own `timeout` (and capped by what is left of the whole budget):
#   env           versions, the GPU
#   install_*     wheels -> $SITE (tools/extra only where pytest/tensorboard are missing)
#   tests_sj2     gpu-marked tests, SpikingJelly 2.0: triton and torch scans and steps vs the
#                 oracle, whole models on CUDA (SpikingJelly's neurons, OTTT, the Triton scan in a model)
#   tests_sj014   gpu-marked tests, SpikingJelly 0.0.0.0.14: the CuPy scan vs the torch scan
#   scan_sj2      benchmarks/gpu_scan_bench.py (torch, triton), fraction of copy bandwidth, and
#                 the Triton forward per launch configuration (--sweep)
#   scan_sj014    the same for torch, cupy
#   profile       benchmarks/gpu_profile.py: wall vs GPU-busy time, launches, synchronisations
#   vgg           OTTT's VGG, batch 128, T=6: BPTT, OTTT, SAF-E online/multi-step, SAF-F
# Every step writes $OUT/<step>.log while it runs and a line to $OUT/summary.txt when it ends;
# junit XML and JSON results go to $OUT as soon as they exist. Exit status: the first failure.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
if [ "${1:-}" = "--dry-run" ] || [ "${GPU_CHECK_DRY_RUN:-0}" = "1" ]; then DRY=1; fi
OUT=${OUT:-$ROOT/benchmarks/results/gpu_check}
WHL=${WHL:-$ROOT/.whl}
SITE=${SITE:-/tmp/saf-gpu-site}
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-450}  # seconds for all steps; the machine allows 8 minutes
START=$(date +%s)
mkdir -p "$OUT" "$SITE"
: > "$OUT/summary.txt"
export PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 TRITON_CACHE_DIR="$SITE/triton-cache"
status=0

note() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }

# step NAME SECONDS PROGRAM ARGS...: PROGRAM (an executable, never a shell function) under
# `timeout`, output to $OUT/NAME.log as it runs, the result line to $OUT/summary.txt.
step() {
  local name=$1 limit=$2 left rc t0
  shift 2
  left=$(( START + BUDGET - $(date +%s) ))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    note "$name: NOT RUN (the ${BUDGET}s budget is spent)"; [ "$status" -eq 0 ] && status=124
    return 0
  fi
  echo "\$ $*" > "$OUT/$name.log"
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" >> "$OUT/$name.log" 2>&1
  rc=$?
  note "$name: rc=$rc in $(( $(date +%s) - t0 ))s (limit ${limit}s)"
  if [ "$rc" -ne 0 ]; then tail -5 "$OUT/$name.log"; [ "$status" -eq 0 ] && status=$rc; fi
  return 0
}

# has MODULE: can Python import it (a probe, itself under a time limit)?
has() { timeout -k 5 60 "$PY" -c "import $1" > /dev/null 2>&1; }

# Pure-Python wheels of group $1 into $SITE/$1 (pip, or unzip where pip is missing).
install() {
  local group=$1
  local wheels=("$WHL/$group"/*.whl)
  if [ ! -e "${wheels[0]}" ]; then note "install_$group: no wheels in $WHL/$group"; return 1; fi
  rm -rf "${SITE:?}/$group"
  if has pip; then
    step "install_$group" 60 "$PY" -m pip install -q --no-index --no-deps --target "$SITE/$group" "${wheels[@]}"
  else
    mkdir -p "$SITE/$group"
    for w in "${wheels[@]}"; do step "install_$group" 30 "$PY" -m zipfile -e "$w" "$SITE/$group"; done
  fi
}

note "gpu_check $( [ "$DRY" = 1 ] && echo '(dry run: no CUDA steps)' ) out=$OUT"
step env 30 "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
for m in ('triton', 'cupy', 'numpy', 'pytest'):
    try: print(m, __import__(m).__version__)
    except Exception as e: print(m, 'missing:', e)
if torch.cuda.is_available(): print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).total_memory >> 20, 'MiB')"
[ "$DRY" = 1 ] || step nvidia_smi 15 nvidia-smi

# PYTHONPATH for each generation: the repository, the generation, what this machine lacks.
COMMON=""
if ! has pytest; then install tools && COMMON="$COMMON:$SITE/tools"; fi
if ! has torch.utils.tensorboard; then
  install extra && COMMON="$COMMON:$SITE/extra"  # SpikingJelly 2.0's learning module imports it
fi
if ! has h5py; then  # only imported by SpikingJelly 2.0's model zoo
  mkdir -p "$SITE/stubs/h5py"
  echo '"""Stand-in for h5py (imported by SpikingJelly 2.0'"'"'s model package, unused here)."""' \
    > "$SITE/stubs/h5py/__init__.py"
  COMMON="$COMMON:$SITE/stubs"; note "h5py missing: a stand-in module is on PYTHONPATH"
fi
P2=""; P14=""
if install sj2; then P2="$ROOT:$SITE/sj2$COMMON"; fi
if install sj014; then P14="$ROOT:$SITE/sj014$COMMON"; fi
if [ -z "$P2" ] && [ "$DRY" = 1 ]; then  # dry run without wheels: the installed packages
  P2="$ROOT$COMMON"; note "no SpikingJelly 2.0 wheel: using the installed packages"
fi

if [ "$DRY" = 1 ]; then
  # the Triton scan runs in Triton's interpreter on CPU tensors
  TESTARGS=(--collect-only); BENCH=(--device cpu --numel 4096 --reps 1 --T 6); INTERP=1
else
  TESTARGS=(); BENCH=(--T 6,16 --numel 134217728); INTERP=0
fi
if [ -n "$P2" ]; then
  step tests_sj2 150 env PYTHONPATH="$P2" "$PY" -m pytest -q -m gpu -rs -p no:cacheprovider \
    "${TESTARGS[@]}" tests/test_kernels.py tests/test_kernel_step.py tests/test_cuda_models.py --junitxml="$OUT/tests_sj2.xml"
fi
if [ -n "$P14" ]; then
  step tests_sj014 70 env PYTHONPATH="$P14" "$PY" -m pytest -q -m gpu -rs -p no:cacheprovider \
    -W ignore::DeprecationWarning "${TESTARGS[@]}" tests/legacy --junitxml="$OUT/tests_sj014.xml"
fi
if [ -n "$P2" ]; then
  step scan_sj2 90 env PYTHONPATH="$P2" TRITON_INTERPRET=$INTERP "$PY" benchmarks/gpu_scan_bench.py "${BENCH[@]}" \
    --backends torch,triton --sweep --out "$OUT/scan_sj2.json"
fi
if [ -n "$P14" ]; then
  step scan_sj014 30 env PYTHONPATH="$P14" "$PY" benchmarks/gpu_scan_bench.py "${BENCH[@]}" \
    --backends torch,cupy --dtypes float32 --out "$OUT/scan_sj014.json"
fi
if [ -n "$P2" ]; then
  if [ "$DRY" = 1 ]; then  # the same entry point on a small MLP on CPU
    step bench_smoke 60 env PYTHONPATH="$P2" "$PY" benchmarks/bench.py --net mlp --hidden 16 \
      --batch 2 --T 2 --methods saf_e_multi --repeats 1 --warmup 0 --device cpu --no-memory \
      --name smoke --results-dir "$OUT" --plot-dir "$OUT" --no-plot
  else
    step profile 120 env PYTHONPATH="$P2" "$PY" benchmarks/gpu_profile.py --out "$OUT/profile.json"
    step vgg 150 env PYTHONPATH="$P2" "$PY" benchmarks/bench.py --net vgg --width-div 1 \
      --batch 128 --T 6 --methods bptt,ottt,saf_e_online,saf_e_multi,saf_f --repeats 3 \
      --warmup 1 --device cuda --name vgg_b128_T6_cuda --results-dir "$OUT" --plot-dir "$OUT" \
      --no-plot
  fi
fi
note "gpu_check done in $(( $(date +%s) - START ))s, status $status"
exit "$status"
