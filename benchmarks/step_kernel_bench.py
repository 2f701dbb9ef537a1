"""The fused neuron step of step mode 's' (saf_plugin.kernels.step, backend "cpu") against the
code it replaces (backend "torch": core's element-wise operations, chosen here with
SAF_PLUGIN_NO_CPU_SCAN=1), on CPU, interleaved repeats, ratios of medians:

- aten operations of one SpikingJelly Linear(16, 32) + LIFNode(v_reset=None) step, forward and
  backward (SAF-E at step 2, SAF-F at step 3, its last: the step with a backward), counted with
  a TorchDispatchMode;
- ``kernels.step`` alone, forward and backward, against the same step as a scan of T = 1
  (``kernels.scan``, "cpu") and the PyTorch code, at 1x64 and 16x4096 neurons (a sample is the
  median of 200 calls): is a dedicated step operator cheaper than the scan's?
- the wall time of that step (batch 8; a sample is the median of 50 steps), and of one
  training iteration of OTTT's VGG at width /32 (batch 1, 8x8 input, T = 6; a tiny network
  whose time is mostly the engine's) with SAF-E online and SAF-F (a sample is the median of 8 iterations).

    OMP_NUM_THREADS=1 python benchmarks/step_kernel_bench.py 9 out.json
"""
import collections
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")
import saf_plugin  # noqa: E402
from saf_plugin.bench.measure import machine, make_inputs  # noqa: E402
from saf_plugin.bench.models import VGG  # noqa: E402
from saf_plugin.bench.variants import make_runner, variant  # noqa: E402


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def oracle(on: bool):
    if on:
        os.environ["SAF_PLUGIN_NO_CPU_SCAN"] = "1"
    else:
        os.environ.pop("SAF_PLUGIN_NO_CPU_SCAN", None)


def linear_lif(mode, decay_input=False):
    from spikingjelly.activation_based import functional, layer, neuron

    torch.manual_seed(0)
    net = torch.nn.Sequential(layer.Linear(16, 32),
                              neuron.LIFNode(tau=2.0, v_reset=None, decay_input=decay_input))
    with torch.no_grad():
        net[0].weight.mul_(4.0)
    saf_plugin.set_saf(net, mode)
    x = torch.rand(4, 8, 16)

    def run(measure=None):
        """4 steps; returns the operations (or the seconds) of the measured step."""
        functional.reset_net(net)
        out = None
        for t in range(4):
            timed = t == (3 if mode == "F" else 2)
            ops = Ops() if measure == "ops" and timed else None
            t0 = time.perf_counter()
            if ops:
                ops.__enter__()
            out = net(x[t])
            if mode == "E" or t == 3:
                out.sum().backward()
            if ops:
                ops.__exit__(None, None, None)
            if timed:
                took = time.perf_counter() - t0
                result = ops.ops if ops else took
        return result
    return run


def step_alone(shape, how):
    """One neuron step, forward and backward, three ways."""
    from spikingjelly.activation_based import surrogate

    sur = surrogate.Sigmoid()
    y = torch.randn(*shape).requires_grad_(True)
    prev, g = torch.ones(*shape), torch.ones(*shape)
    kw = dict(lam=0.5, theta=1.0, surrogate=sur)

    def run(measure=None):
        t0 = time.perf_counter()
        if how == "scan":
            a, _, s = saf_plugin.kernels.scan(y.unsqueeze(0), prev, backend="cpu", spikes=True,
                                              **kw)
            a, s = a.squeeze(0), s.squeeze(0)
        else:
            a, s = saf_plugin.kernels.step(y, prev, backend="cpu" if how == "step" else "torch",
                                           **kw)
        torch.autograd.backward([a, s], [g, g])
        return time.perf_counter() - t0
    return run


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(repeats: int, path: str):
    rows = {"machine": machine(), "threads": torch.get_num_threads(), "repeats": repeats,
            "ops": {}, "time": {}}
    for mode in ("E", "F"):
        for di in (False, True):
            run = linear_lif(mode, di)
            counts = {}
            for name, on in (("fused", False), ("oracle", True)):
                oracle(on)
                run()
                counts[name] = dict(run("ops"))
            oracle(False)
            rows["ops"][f"linear_lif_{mode}{'_decay_input' if di else ''}"] = {
                k: {"total": sum(v.values()), "by_op": v} for k, v in counts.items()}
    # name -> (the fused run, the PyTorch-code run); a run returns the seconds it measured
    cases = {f"step_{how}_{n}x{m}": (step_alone((n, m), how), step_alone((n, m), "torch"))
             for n, m in ((1, 64), (16, 4096)) for how in ("step", "scan")}
    for mode in ("E", "F"):
        run = linear_lif(mode)
        cases[f"linear_lif_{mode}"] = (run, run)
    base = VGG(32, in_channels=3)
    x, y = make_inputs([3, 8, 8], 1, 6, torch.device("cpu"))
    for method in ("saf_e_online", "saf_f"):
        runner = make_runner(method, variant(base, method))
        run = (lambda r: lambda measure=None: _timed(lambda: r(x, y)))(runner)
        cases[f"vgg32_b1_{method}"] = (run, run)
    samples = {(c, k): [] for c in cases for k in ("fused", "oracle")}
    for r in range(repeats + 1):
        for c, runs in cases.items():
            n = 200 if c.startswith("step_") else 50 if c.startswith("linear") else 8
            for k, run, on in (("fused", runs[0], False), ("oracle", runs[1], True)):
                oracle(on)  # the PyTorch code where the run does not name its backend
                took = statistics.median(run() for _ in range(n))
                if r:
                    samples[(c, k)].append(took)
        oracle(False)
        print("repeat", r, file=sys.stderr, flush=True)
    for c in cases:
        f, o = statistics.median(samples[(c, "fused")]), statistics.median(samples[(c, "oracle")])
        paired = statistics.median(a / b for a, b in zip(samples[(c, "fused")],
                                                         samples[(c, "oracle")]))
        rows["time"][c] = {"fused_s": f, "oracle_s": o, "ratio_of_medians": f / o,
                           "paired_median_ratio": paired,
                           "fused_samples_s": samples[(c, "fused")],
                           "oracle_samples_s": samples[(c, "oracle")],
                           "what": "one training iteration (T = 6)" if c.startswith("vgg")
                           else "one step, forward+backward"}
        print(f"{c}: fused {f * 1e6:.0f} us, oracle {o * 1e6:.0f} us, ratio {f / o:.2f} "
              f"(paired {paired:.2f})")
    for c, v in rows["ops"].items():
        print(f"{c}: aten ops fused {v['fused']['total']}, oracle {v['oracle']['total']}")
    Path(path).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
