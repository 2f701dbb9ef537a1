"""The README's main job runs (tiny budget) and the README's example stays true."""

import re
from pathlib import Path

from saf_plugin import demo


def test_demo_runs_both_methods():
    rows = demo.main(["--epochs", "1", "--T", "2", "--batch-size", "256"])
    assert [r["method"] for r in rows] == ["bptt", "saf-e"]
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["s_per_epoch"] > 0 and r["peak_mib"] > 0


def test_readme_python_block_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        exec(compile(block, "README.md", "exec"), {})
