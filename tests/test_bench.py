"""benchmarks/bench.py at a tiny size: every method runs, results and plots are written."""

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

warnings.filterwarnings("ignore", message="Triton not available")
pytest.importorskip("spikingjelly.activation_based")

from saf_plugin.bench.main import main as bench_main  # noqa: E402
from saf_plugin.bench.measure import make_inputs  # noqa: E402
from saf_plugin.bench.methods import METHODS, ON_REQUEST, SNNTORCH_METHODS  # noqa: E402
from saf_plugin.bench.models import VGG, snntorch_csnn  # noqa: E402
from saf_plugin.bench.variants import make_runner, variant  # noqa: E402

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("saf_bench_script", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_main_tiny_vgg_all_methods(tmp_path):
    result = load_bench().main([
        "--net", "vgg", "--width-div", "32", "--input-shape", "3,8,8", "--batch", "2",
        "--T", "2,3", "--repeats", "1", "--warmup", "0", "--no-memory", "--name", "tiny",
        "--results-dir", str(tmp_path), "--plot-dir", str(tmp_path / "plots")])
    assert not result["errors"], result["errors"]
    default = set(METHODS) - set(ON_REQUEST)  # the host-bound floors run when named
    assert {r["method"] for r in result["rows"]} == default
    saved = json.loads((tmp_path / "tiny.json").read_text())
    assert saved["machine"]["torch"] and len(saved["rows"]) == 2 * len(default)
    assert saved["ratios"][0]["saf_e_online/ottt time"] > 0
    assert (tmp_path / "tiny.csv").exists() and (tmp_path / "plots" / "tiny.png").exists()


def test_bench_fresh_process_memory(tmp_path):
    result = bench_main([
        "--net", "mlp", "--hidden", "8", "--input-shape", "6", "--batch", "2", "--T", "2",
        "--methods", "saf_e_online", "--repeats", "1", "--warmup", "0", "--name", "mem",
        "--results-dir", str(tmp_path), "--no-plot"])
    row = result["rows"][0]
    assert "error" not in row, row
    assert row["saved_peak_bytes"] > 0 and row["peak_rss_bytes"] > 0


def test_ottt_variant_is_spikingjelly_ottt():
    from spikingjelly.activation_based import layer, neuron

    net = variant(VGG(width_div=32), "ottt")
    assert isinstance(net.features, layer.OTTTSequential)
    assert all(not isinstance(m, neuron.LIFNode) or isinstance(m, neuron.OTTTLIFNode)
               for m in net.modules())


def test_snntorch_methods_tiny(tmp_path, capsys):
    pytest.importorskip("snntorch")
    result = load_bench().main([
        "--net", "snntorch6", "--batch", "2", "--T", "2", "--repeats", "1", "--warmup", "1",
        "--no-memory", "--name", "sn", "--results-dir", str(tmp_path), "--no-plot"])
    assert not result["errors"], result["errors"]
    assert [r["method"] for r in result["rows"]] == [m for m in SNNTORCH_METHODS
                                                     if m not in ON_REQUEST]
    assert result["config"]["library"] == "snntorch"
    err = capsys.readouterr().err
    assert "[1/6] warm-up T=2 bptt" in err and "repeat 1/1 T=2 saf_f" in err  # progress


def test_snntorch_refuses_spikingjelly_only_methods():
    pytest.importorskip("snntorch")
    with pytest.raises(ValueError, match="not available for snnTorch"):
        variant(snntorch_csnn(), "ottt")


def test_max_seconds_stops_a_method_at_larger_T(tmp_path):
    result = bench_main([
        "--net", "mlp", "--hidden", "8", "--input-shape", "6", "--batch", "2", "--T", "2,4",
        "--methods", "bptt", "--repeats", "1", "--warmup", "0", "--no-memory", "--quiet",
        "--max-seconds", "1e-9", "--results-dir", str(tmp_path), "--no-plot"])
    assert [r["T"] for r in result["rows"]] == [2] and result["stopped"] == {"bptt": 2}


def test_input_memory_does_not_grow_with_T():
    """The input sequence is a view of one image batch: its bytes do not count T times."""
    x4, _ = make_inputs([3, 8, 8], 2, 4, "cpu")
    x256, _ = make_inputs([3, 8, 8], 2, 256, "cpu")
    assert x256.shape[0] == 256 and torch.equal(x256[0], x256[-1])
    assert x4.untyped_storage().nbytes() == x256.untyped_storage().nbytes() == 2 * 3 * 8 * 8 * 4


def test_library_does_not_import_the_benchmark():
    """``import saf_plugin`` leaves the benchmark application out; importing the application
    does not import the command line (no cycle) and installs no warnings filter."""
    code = ("import sys, warnings\n"
            "import saf_plugin\n"
            "print(sorted(m for m in sys.modules if m.startswith('saf_plugin.bench')))\n"
            "before = list(warnings.filters)\n"
            "import saf_plugin.bench.main\n"
            "print('saf_plugin.cli' in sys.modules, warnings.filters == before)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent).stdout
    assert out.splitlines() == ["[]", "False True"], out


@pytest.mark.parametrize("method", ["plain_step", "relu_online"])
def test_per_step_floors_are_the_hand_written_loop(method):
    """``plain_step`` (and ``relu_online``): a backward and an SGD update at every step, the
    state detached after each; the weights after one iteration equal a hand-written loop's."""
    import copy

    import torch.nn.functional as F
    from spikingjelly.activation_based import functional

    torch.manual_seed(0)
    base = VGG(width_div=32)
    x, y = torch.rand(3, 2, 3, 8, 8), torch.tensor([1, 4])
    net = variant(base, method)
    make_runner(method, net)(x, y)
    ref = copy.deepcopy(variant(base, "relu" if method == "relu_online" else "bptt"))
    functional.set_step_mode(ref, "s")
    opt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9)
    functional.reset_net(ref)
    for t in range(3):
        opt.zero_grad()
        (F.cross_entropy(ref(x[t]), y) / 3).backward()
        opt.step()
        functional.detach_net(ref)
    moved = 0
    for (n, p), (_, q), (_, b) in zip(net.named_parameters(), ref.named_parameters(),
                                      base.named_parameters()):
        assert torch.equal(p, q), n
        moved += not torch.equal(p, b)
    assert moved > 0  # the loop trained


def test_plain_step_runs_on_snntorch():
    base = snntorch_csnn()
    x, y = torch.rand(2, 2, 1, 28, 28), torch.tensor([0, 3])
    before = [p.detach().clone() for p in base.parameters()]
    net = variant(base, "plain_step")
    make_runner("plain_step", net)(x, y)
    assert "plain_step" in SNNTORCH_METHODS
    assert any(not torch.equal(p, b) for p, b in zip(net.parameters(), before))
