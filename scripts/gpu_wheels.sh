#!/usr/bin/env bash
# Run where there is network: puts the pure-Python wheels (py3-none-any) that
# scripts/gpu_check.sh installs offline with `pip install --no-deps --target` into .whl/
# (git-ignored; carry it: run(..., carry=[".whl"])). PyTorch, Triton, CuPy and NumPy are
# already on the GPU machine; nothing compiled is needed, so the Python version does not matter.
#   .whl/sj2/     spikingjelly 2.0.0, loguru, snntorch 1.0.0 (the generation with Triton kernels)
#   .whl/sj014/   spikingjelly 0.0.0.0.14               (the CuPy generation)
#   .whl/tools/   pytest and its pure-Python dependencies, used only where pytest is missing
#   .whl/extra/   tensorboard, protobuf, absl-py: SpikingJelly 2.0's learning module imports
#                 torch.utils.tensorboard; used only where that import fails
set -euo pipefail
cd "$(dirname "$0")/.."
get() { local dir=$1; shift
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
          --implementation py --abi none --platform any -d ".whl/$dir" "$@"; }
rm -rf .whl
get sj2 spikingjelly==2.0.0 loguru snntorch==1.0.0
get sj014 spikingjelly==0.0.0.0.14
get tools pytest pluggy iniconfig packaging pygments
get extra tensorboard protobuf absl-py
ls .whl/*/ && du -sh .whl
