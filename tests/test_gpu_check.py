"""scripts/gpu_check.sh, the one-command GPU check, verified on CPU: its syntax, that every
timed step hands `timeout` a program (never a shell function), and a dry run (every step that
needs no CUDA: collecting the gpu-marked tests, the scan benchmark with Triton interpreted on
CPU, the benchmark entry point on a small MLP), results in $OUT."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = [ROOT / "scripts" / "gpu_check.sh", ROOT / "scripts" / "gpu_wheels.sh"]


def test_scripts_parse():
    for script in SCRIPTS:
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_timeout_gets_programs_only():
    text = SCRIPTS[0].read_text()
    functions = set(re.findall(r"^(\w+)\(\) \{", text, re.M))
    assert {"step", "note", "install"} <= functions
    for line in re.findall(r"^\s*step \S+ \d+ (\S+)", text, re.M):
        assert line not in functions, line
    calls = re.findall(r"\btimeout -k 5 (\S+) (\S+)", text)
    assert calls == [('"$limit"', '"$@"'), ("60", '"$PY"')], calls  # step's, has's
    assert not re.search(r'^\s*(if !? ?)?"\$PY"', text, re.M)  # every Python run is timed


def test_dry_run(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), SITE=str(tmp_path / "site"),
               WHL=str(tmp_path / "no-wheels"), PYTHON=sys.executable)
    r = subprocess.run(["bash", str(SCRIPTS[0]), "--dry-run"], env=env, capture_output=True,
                       text=True, timeout=300)
    out = tmp_path / "out"
    summary = (out / "summary.txt").read_text()
    assert r.returncode == 0, summary + r.stdout[-2000:] + r.stderr[-2000:]
    for step in ("env", "tests_sj2", "scan_sj2", "bench_smoke"):
        assert re.search(rf"^== \S+ {step}: rc=0 ", summary, re.M), summary
    assert "vgg:" not in summary and "nvidia_smi" not in summary  # CUDA steps skipped
    assert "tests collected" in (out / "tests_sj2.log").read_text()
    rows = json.loads((out / "scan_sj2.json").read_text())["rows"]
    ran = {r["backend"] for r in rows if "skipped" not in r}
    assert ran == {"torch", "triton"}, rows
    assert (out / "smoke.json").exists()
