"""Every example runs for a tiny budget on the offline digits; the DDP example matches one process."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

pytest.importorskip("sklearn")

TINY = ["--epochs", "1", "--max-batches", "2", "--T", "3", "--batch-size", "8"]
CASES = [
    ("spikingjelly_conv_fashion_mnist", ["--channels", "4"], "spikingjelly"),
    ("spikingjelly_ottt_cifar10", ["--width", "16"], "spikingjelly"),
    ("spikingjelly_classify_dvsg", ["--channels", "2", "--batch-size", "2"], "spikingjelly"),
    ("snntorch_tutorial5", ["--hidden", "32"], "snntorch"),
    ("snntorch_tutorial6", ["--width", "4"], "snntorch"),
    ("snntorch_tutorial7", ["--width", "4"], "snntorch"),
]
# models used as they are (training-mode BatchNorm, max pooling): SAF-F refuses their per-step
# operations, and the examples let saf_plugin's error show
REFUSE_F = {"spikingjelly_conv_fashion_mnist", "spikingjelly_classify_dvsg", "snntorch_tutorial6",
            "snntorch_tutorial7"}


def _load(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.mark.parametrize("saf", ["off", "E", "F"])
@pytest.mark.parametrize("name,extra,lib", CASES, ids=[c[0] for c in CASES])
def test_example_runs_offline(name, extra, lib, saf, tmp_path, capsys):
    pytest.importorskip(lib)
    mod = _load(name)
    argv = TINY + extra + ["--saf", saf, "--out-dir", str(tmp_path), "--device", "cpu"]
    if saf == "F" and name in REFUSE_F:
        import saf_plugin

        with pytest.raises(saf_plugin.SAFIncompatibleError, match="SAF-F"):
            mod.main(argv)
        assert not list(tmp_path.glob("*/checkpoint.pt"))
        return
    line = mod.main(argv)
    assert line.startswith("FINAL test_acc=") and "sec_per_epoch=" in line and "peak_mem_mb=" in line
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (run_dir / "log.csv").read_text().count("\n") == 2  # header + one epoch
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert not any("saf" in k for k in ckpt["model"])
    if saf != "off":
        out = capsys.readouterr().out
        assert "saf_plugin.check" in out
    elif importlib.util.find_spec("tensorboard") is not None:
        # --out-dir's help promises TensorBoard exactly when the example writes it
        capsys.readouterr()
        with pytest.raises(SystemExit):
            mod.main(["--help"])
        promised = "TensorBoard" in " ".join(capsys.readouterr().out.split())
        assert promised == any(run_dir.glob("events.out.tfevents*")), name


@pytest.mark.parametrize("name", ["snntorch_tutorial6", "snntorch_tutorial7"])
def test_fix_is_asked_for_not_applied_silently(name, tmp_path, capsys):
    """Max pooling runs exactly under SAF-E: the network stays the tutorial's unless --fix."""
    pytest.importorskip("snntorch")
    mod = _load(name)
    argv = TINY + ["--width", "4", "--out-dir", str(tmp_path), "--device", "cpu"]
    mod.main(argv)
    assert "saf_plugin.fix changed" not in capsys.readouterr().out
    mod.main(argv + ["--saf", "F", "--fix"])  # average pooling: SAF-F trains it
    assert "MaxPool2d" in capsys.readouterr().out


@pytest.mark.parametrize("name,extra,lib", CASES, ids=[c[0] for c in CASES])
def test_quick_setting_on_the_digits_is_the_documented_one(name, extra, lib, capsys):
    """Without options an example trains its quick setting on the offline digits; --help shows
    every default; docs/examples.md quotes that setting."""
    pytest.importorskip(lib)
    mod = _load(name)
    C = _load("_common")
    p = C.base_parser("x", data=(), recipe=mod.RECIPE, digits=mod.DIGITS)
    for key in set(mod.DIGITS) - {"T", "batch_size", "epochs", "lr"}:  # the example's own
        C.preset(p, "--" + key.replace("_", "-"), key)
    args = C.parse(p, [])
    assert {k: getattr(args, k) for k in mod.DIGITS} == mod.DIGITS
    with pytest.raises(SystemExit):
        mod.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key, value in mod.RECIPE.items():
        assert f"default: {value}" in text, (name, key)
    docs = (ROOT / "docs" / "examples.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith(f"| `{name}.py`") and
               "quick" not in line and "%" in line)
    for key, value in mod.DIGITS.items():
        if value != mod.RECIPE[key]:
            flag = "--" + key.replace("_", "-")
            assert f"{flag} {value}" in row, (name, flag, row)


@pytest.mark.slow
def test_a_quick_setting_learns(tmp_path):
    """snnTorch tutorial 5's quick setting, in full: above 80 % on the held-out digits."""
    pytest.importorskip("snntorch")
    line = _load("snntorch_tutorial5").main(["--out-dir", str(tmp_path), "--device", "cpu"])
    assert float(line.split("test_acc=")[1].split()[0]) > 0.8, line


def test_ottt_baseline_and_checkpoint_loads_into_plain_model(tmp_path):
    pytest.importorskip("spikingjelly")
    mod = _load("spikingjelly_ottt_cifar10")
    mod.main(TINY + ["--width", "16", "--ottt", "--out-dir", str(tmp_path / "o")])
    mod.main(TINY + ["--width", "16", "--saf", "E", "--out-dir", str(tmp_path / "e")])
    (run_dir,) = (tmp_path / "e").iterdir()
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    args = type("A", (), {"ottt": False, "width": 16})()
    plain = mod.build(args)  # the ordinary SpikingJelly VGG, no saf_plugin involved
    plain.load_state_dict(state["model"])  # strict: same keys, same shapes


def test_digits_to_events_shapes():
    C = _load("_common")
    x, y = C.digits_images((34, 34))
    ev = C.digits_to_events(x[:3], 5)
    assert ev.shape == (3, 5, 2, 34, 34) and ev.min() >= 0
    assert ev[:, 0, 1].sum() == 0  # frame 0: the digit appears, ON events only
    assert ev[:, 1:, 1].sum() > 0  # motion produces OFF events later


# Runs a script with a communication hook on every DistributedDataParallel it builds, which
# counts the gradient all-reduces (one per bucket; the last bucket ends one) into OUT.<rank>.
COUNT_ALL_REDUCES = """
import os, runpy, sys
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

rounds = []
init = DistributedDataParallel.__init__


def counting_init(self, *args, **kwargs):
    init(self, *args, **kwargs)

    def hook(state, bucket):
        rounds.append(bucket.is_last())
        return allreduce_hook(None, bucket)

    self.register_comm_hook(None, hook)


DistributedDataParallel.__init__ = counting_init
out, script = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[2:]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="__main__")
with open(out + "." + os.environ["RANK"], "w") as f:
    f.write(str(sum(rounds)))
"""


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path):
    """torchrun, 2 processes, gloo on CPU: the same weights as one process on the same global
    batch, with one gradient all-reduce per batch (SAF-E's steps 0..T−2 under no_sync)."""
    pytest.importorskip("spikingjelly")
    args = [*TINY, "--width", "16", "--saf", "E", "--dtype", "float64", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    script = str(EXAMPLES / "spikingjelly_ottt_cifar10.py")
    shim = tmp_path / "count_all_reduces.py"
    shim.write_text(COUNT_ALL_REDUCES)
    counts = tmp_path / "all_reduces"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", str(shim), str(counts), script, *args,
                    "--out-dir", str(tmp_path / "ddp")],
                   check=True, env=env, cwd=tmp_path, timeout=300, capture_output=True)
    batches = 2  # TINY: one epoch of --max-batches 2
    assert [int((tmp_path / f"all_reduces.{r}").read_text()) for r in (0, 1)] == [batches] * 2
    subprocess.run([sys.executable, script, *args, "--out-dir", str(tmp_path / "one")],
                   check=True, env=env, cwd=tmp_path, timeout=300, capture_output=True)
    (d2,) = (tmp_path / "ddp").iterdir()
    (d1,) = (tmp_path / "one").iterdir()
    a = torch.load(d1 / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(d2 / "checkpoint.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12, msg=k)
    assert (d1 / "log.csv").read_text().splitlines()[1:] != []
