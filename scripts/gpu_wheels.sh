#!/usr/bin/env bash
# Run where there is network: puts the wheels scripts/gpu_check.sh installs offline into .whl/
# (git-ignored; carry it: run(..., carry=[".whl"]); the carry limit is 64 MiB).
# SpikingJelly 2.0 imports h5py and torch.utils.tensorboard at import time (checked); torch,
# torchvision and triton are expected on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip download -q --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any"
python3 -m pip download -q --no-deps -d .whl spikingjelly==2.0.0
$PIP -d .whl h5py loguru tensorboard
python3 -m pip download -q --no-deps -d .whl/legacy spikingjelly==0.0.0.0.14
du -sh .whl
