"""The README's first command (tiny budget): both methods run and the output explains itself;
the README's example stays true."""

import re
from pathlib import Path

from saf_plugin import demo


def test_demo_runs_both_methods_and_explains_its_numbers(capsys):
    rows = demo.main(["--epochs", "2", "--T", "2", "--batch-size", "256",
                      "--warmup-batches", "1"])
    assert [r["method"] for r in rows] == ["bptt", "saf-e"]
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["peak_mib"] > 0
        assert len(r["seconds"]) == 2 and r["s_min"] <= r["s_per_epoch"] <= r["s_max"]
    out = capsys.readouterr().out
    # progress: a warm-up, then one line per epoch and method, alternating who goes first
    assert "warm-up (not timed)" in out
    epochs = re.findall(r"^epoch (\d)/2 (bptt|saf-e)", out, flags=re.M)
    assert epochs == [("1", "bptt"), ("1", "saf-e"), ("2", "saf-e"), ("2", "bptt")]
    # the table, then a legend for every column and method, then the summary
    assert re.search(r"^method +accuracy +s/epoch +\(min-max\) +peak memory$", out, flags=re.M)
    for words in ("bptt    backpropagation through time", 'saf-e   the same model after set_saf',
                  "held-out 20 %", "median (min-max)", "kept for backward",
                  "Accuracy (held-out):", "Memory for backward:", "Time: saf-e"):
        assert words in out, words


def test_readme_python_block_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        exec(compile(block, "README.md", "exec"), {})
