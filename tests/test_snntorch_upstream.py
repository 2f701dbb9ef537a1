"""snnTorch's own test suite (a subset, see tests/snntorch_upstream/README.md) passes with
saf-plugin imported, and with every snn.Leaky converted to SAF and reverted: the plugin leaves
snnTorch's behaviour untouched."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("snntorch")
UPSTREAM = Path(__file__).parent / "snntorch_upstream"


@pytest.mark.parametrize("mode", ["import", "roundtrip"])
def test_upstream_snntorch_suite_passes(mode):
    env = dict(os.environ, SAF_UPSTREAM_MODE=mode, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W",
         "ignore::UserWarning", str(UPSTREAM)],
        env=env, cwd=UPSTREAM.parents[1], capture_output=True, text=True, timeout=300)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    passed = int(re.search(r"(\d+) passed", proc.stdout).group(1))
    assert passed >= 60, tail
    if mode == "roundtrip":
        converted = int(re.search(r"round trips: (\d+) converted", proc.stdout).group(1))
        assert converted >= 5, tail  # 6 Leaky fixtures build convertible neurons (2 refused)
