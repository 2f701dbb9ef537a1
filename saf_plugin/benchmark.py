"""Time and memory of one training iteration: SAF against BPTT, OTTT, SLTT and a ReLU bound.

One process times every method with interleaved repeats (repeat r: for each T, for each
method, one iteration), so machine noise hits all methods alike; medians and min-max are
reported. The warm-up iterations (``--warmup``, not timed) run each method at the smallest T.
With ``--max-seconds S`` a method whose iteration took longer than S seconds at some T is not
run at larger T. Progress goes to stderr, one line per iteration. Memory per (method, T) comes from a fresh worker process each: the peak bytes
autograd keeps for backward (``saf_plugin.training.SavedTensorMeter``) and the peak RSS
(CPU) or ``torch.cuda.max_memory_allocated`` (GPU) of one iteration.

Methods (one iteration = one sequence of T steps, loss Σ_t CE(o[t], y)/T, one SGD update
unless said otherwise):

  bptt          SpikingJelly LIFNode, step mode 'm' (fused scan), one backward
  ottt          SpikingJelly OTTT: OTTTLIFNode + OTTTSequential, ottt_online_training(online=True)
  sltt          SpikingJelly SLTTLIFNode, per-step backward, one update (online=False)
  saf_e_online  SAF-E, step mode 's', per-step backward and update (OTTT_O style)
  saf_e_multi   SAF-E, step mode 'm' (all T at once), one backward
  saf_f         SAF-F, steps 0..T-2 without autograd, one backward
  relu          the same network with ReLU instead of neurons, forward+backward per step

snnTorch models (``--net snntorch6``: snnTorch tutorial 6's CSNN with average pooling, or
``--model``) run bptt (snn.Leaky, one call per step, one backward), saf_e_online and saf_f;
snnTorch has no OTTT, SLTT or multi-step mode.

    python benchmarks/bench.py --net vgg --width-div 1 --batch 16 --T 6,16 --repeats 3
    python -m saf_plugin.benchmark ...        (the same; ``saf bench`` runs it on your model)

Writes <results-dir>/<name>.json and .csv and <plot-dir>/<name>_{time,memory}.png
(``benchmarks/bench.py``: benchmarks/results/ and docs/benchmarks/ of the repository).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

warnings.filterwarnings("ignore", message="Triton not available")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

PACKAGE_PARENT = Path(__file__).resolve().parent.parent

METHODS = ("bptt", "ottt", "sltt", "saf_e_online", "saf_e_multi", "saf_f", "relu")
SNNTORCH_METHODS = ("bptt", "saf_e_online", "saf_f")
METHOD_HELP = {
    "bptt": "backpropagation through time, the library's own training (one backward)",
    "ottt": "SpikingJelly's OTTT: OTTTLIFNode + OTTTSequential, update every step",
    "sltt": "SpikingJelly's SLTT: SLTTLIFNode, backward every step, one update",
    "saf_e_online": "SAF-E online: set_saf(net, 'E'), backward and update every step",
    "saf_e_multi": "SAF-E multi-step: set_saf(net, 'E'), step mode 'm', one backward",
    "saf_f": "SAF-F: set_saf(net, 'F'), steps 0..T-2 without autograd, one backward",
    "relu": "the same network with ReLU instead of neurons (a lower bound on time)",
}
VGG_CFG = [64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512]  # ottt_spiking_vggws ("S")


# --------------------------------------------------------------------------- networks


def lif():
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.LIFNode(tau=2.0, decay_input=False, v_reset=None, detach_reset=True,
                          surrogate_function=surrogate.Sigmoid(alpha=4.0))


class VGG(nn.Module):
    """``ottt_spiking_vggws``'s network (cfg S: WSConv2d, LIF, Scale(2.74), AvgPool; global
    average pooling; Linear readout) with every width divided by ``width_div``; ``features``
    and ``classifier`` are plain ``nn.Sequential`` so each method can rebuild them."""

    def __init__(self, width_div: int = 1, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        from spikingjelly.activation_based import layer
        from spikingjelly.activation_based.model.spiking_vggws_ottt import Scale

        mods: list[nn.Module] = []
        c = in_channels
        for v in VGG_CFG:
            if v == "A":
                mods.append(layer.AvgPool2d(2, 2))
            else:
                w = max(1, v // width_div)
                mods += [layer.WSConv2d(c, w, kernel_size=3, padding=1), lif(), Scale(2.74)]
                c = w
        self.features = nn.Sequential(*mods)
        self.classifier = nn.Sequential(layer.AdaptiveAvgPool2d((1, 1)), layer.Flatten(1),
                                        layer.Linear(c, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def mlp(in_features: int = 784, hidden: int = 512, num_classes: int = 10) -> nn.Module:
    from spikingjelly.activation_based import layer

    return nn.Sequential(layer.Flatten(1), layer.Linear(in_features, hidden), lif(),
                         layer.Linear(hidden, hidden), lif(), layer.Linear(hidden, num_classes))


def snntorch_csnn(beta: float = 0.5) -> nn.Module:
    """snnTorch tutorial 6's CSNN for 1x28x28 input (Conv 5x5 12, pool, Leaky, Conv 5x5 64,
    pool, Leaky, Linear 1024-10, Leaky) with average pooling instead of max pooling, which SAF
    reproduces exactly; ``fast_sigmoid(slope=25)``, ``init_hidden=True``."""
    import snntorch as snn
    from snntorch import surrogate

    sg = surrogate.fast_sigmoid(slope=25)
    return nn.Sequential(
        nn.Conv2d(1, 12, 5), nn.AvgPool2d(2), snn.Leaky(beta=beta, spike_grad=sg, init_hidden=True),
        nn.Conv2d(12, 64, 5), nn.AvgPool2d(2), snn.Leaky(beta=beta, spike_grad=sg, init_hidden=True),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 10),
        snn.Leaky(beta=beta, spike_grad=sg, init_hidden=True, output=True))


def library(net: nn.Module) -> str:
    """"snntorch" when the model has snnTorch neurons, else "spikingjelly"."""
    snn = sys.modules.get("snntorch")
    neuron_cls = getattr(snn, "SpikingNeuron", None)
    if neuron_cls is not None and any(isinstance(m, neuron_cls) for m in net.modules()):
        return "snntorch"
    return "spikingjelly"


def methods_for(net: nn.Module) -> tuple[str, ...]:
    """The methods that can run on ``net``'s library."""
    return SNNTORCH_METHODS if library(net) == "snntorch" else METHODS


# --------------------------------------------------------------------------- method variants


def _neurons(net: nn.Module):
    from spikingjelly.activation_based import neuron

    return [(n, m) for n, m in net.named_modules() if isinstance(m, neuron.BaseNode)]


def _replace(net: nn.Module, path: str, new: nn.Module) -> nn.Module:
    if not path:
        return new
    parent, _, child = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, new)
    return net


def _neuron_kwargs(m) -> dict:
    return dict(tau=float(m.tau), decay_input=m.decay_input, v_threshold=float(m.v_threshold),
                v_reset=None, surrogate_function=m.surrogate_function,
                detach_reset=m.detach_reset)


def variant(base: nn.Module, method: str) -> nn.Module:
    """A deep copy of the SpikingJelly model ``base`` (LIF neurons, soft reset) set up for
    ``method``. OTTT swaps neurons to OTTTLIFNode and every innermost ``nn.Sequential`` to
    ``OTTTSequential`` (a plain tensor then passes the first module, as in SpikingJelly)."""
    import saf_plugin

    net = copy.deepcopy(base)
    if library(base) == "snntorch":
        if method not in SNNTORCH_METHODS:
            raise ValueError(f"{method} is not available for snnTorch models (snnTorch has no "
                             f"OTTT, SLTT or multi-step mode); use {', '.join(SNNTORCH_METHODS)}")
        if method != "bptt":
            saf_plugin.set_saf(net, "E" if method == "saf_e_online" else "F")
        return net
    from spikingjelly.activation_based import functional, layer, neuron

    if method in ("bptt", "saf_e_multi"):
        functional.set_step_mode(net, "m")
    else:
        functional.set_step_mode(net, "s")
    if method == "saf_e_multi" or method == "saf_e_online":
        saf_plugin.set_saf(net, "E")
    elif method == "saf_f":
        saf_plugin.set_saf(net, "F")
    elif method == "relu":
        for path, _ in _neurons(net):
            net = _replace(net, path, nn.ReLU())
    elif method == "sltt":
        for path, m in _neurons(net):
            net = _replace(net, path, neuron.SLTTLIFNode(**_neuron_kwargs(m)))
    elif method == "ottt":
        for path, m in _neurons(net):
            kw = _neuron_kwargs(m)
            kw.pop("detach_reset")
            net = _replace(net, path, neuron.OTTTLIFNode(**kw))
        seqs = [(p, s) for p, s in net.named_modules() if type(s) is nn.Sequential
                and not any(isinstance(c, nn.Sequential) for c in s.children())]
        for path, s in seqs:
            net = _replace(net, path, layer.OTTTSequential(*s.children()))
    elif method != "bptt":
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    functional.invalidate_reset_cache(net) if hasattr(functional, "invalidate_reset_cache") else None
    return net


def make_runner(method: str, net: nn.Module, lr: float = 0.01) -> Callable:
    """``run(x_seq [T, B, ...], y [B])``: one training iteration of ``method`` on ``net``."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.learning import online_learning

    from .training import train_step

    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)

    def loss_t(T):
        return lambda o, y: F.cross_entropy(o, y) / T

    if method in ("ottt", "sltt"):
        def run(x_seq, y):
            T = x_seq.shape[0]
            tgt = y.unsqueeze(1).expand(-1, T)
            online_learning.ottt_online_training(net, opt, x_seq.transpose(0, 1), tgt, loss_t(T),
                                                 online=(method == "ottt"))
            functional.reset_net(net)
    elif method == "relu":
        def run(x_seq, y):
            T = x_seq.shape[0]
            opt.zero_grad()
            for t in range(T):
                loss_t(T)(net(x_seq[t]), y).backward()
            opt.step()
    else:
        online = method == "saf_e_online"

        def run(x_seq, y):
            train_step(net, x_seq, y, loss_t(x_seq.shape[0]), opt, online=online)
    return run


# --------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iteration(run: Callable, x_seq, y, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    run(x_seq, y)
    _sync(device)
    return time.perf_counter() - t0


def memory_of(run: Callable, x_seq, y, device) -> dict:
    """One iteration under the saved-tensor meter; peak RSS / CUDA peak of this process."""
    from .training import SavedTensorMeter, peak_rss_bytes

    rss0 = _rss()
    hwm = _reset_hwm()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with SavedTensorMeter(exclude=[x_seq]) as meter:
        run(x_seq, y)
    _sync(device)
    out = {"saved_peak_bytes": meter.peak, "saved_total_bytes": meter.total,
           "rss_before_bytes": rss0,
           "peak_rss_bytes": _read_hwm() if hwm else peak_rss_bytes()}
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def _rss() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_hwm() -> bool:
    """Linux: reset this process's peak RSS (VmHWM) so the peak covers one iteration only,
    not the imports before it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _read_hwm() > 0
    except OSError:
        return False


def _read_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def num_classes(base: nn.Module, shape) -> int:
    """The size of the model's output, from one no-grad step on a copy."""
    from .training import reset_state

    net = copy.deepcopy(base)
    if library(base) == "spikingjelly":
        from spikingjelly.activation_based import functional

        functional.set_step_mode(net, "s")
    with torch.no_grad():
        out = net(torch.zeros(1, *shape))
        reset_state(net)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return int(out.shape[-1])


def _inputs(shape, batch, T, device, dtype=torch.float32, seed=0, classes=10):
    """Direct encoding: one random image per sample, shown at every step. ``x_seq`` is a
    [T, B, ...] view of one [B, ...] tensor, so the input's memory does not grow with T (a
    materialised copy would add B·C·H·W·4 bytes per step to every method's peak RSS)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *shape, generator=g).to(device, dtype)
    y = torch.randint(0, classes, (batch,), generator=g)
    return x.unsqueeze(0).expand(T, *x.shape), y.to(device)


def _base(args, say: Callable = lambda msg: None) -> nn.Module:
    torch.manual_seed(0)
    if args.model:
        from .cli import load_factory

        net = load_factory(args.model)()
    elif args.net == "vgg":
        net = VGG(args.width_div)
    elif args.net == "snntorch6":
        net = snntorch_csnn()
    else:
        net = mlp(int(torch.tensor(args.input_shape).prod()), args.hidden)
    if args.fix:
        import saf_plugin

        for change in saf_plugin.fix(net):
            say(f"fix: {change.line()}")
    return net


def worker(args) -> dict:
    """Fresh-process memory measurement of one (method, T)."""
    device = torch.device(args.device)
    base = _base(args)
    classes = num_classes(base, args.input_shape)
    net = variant(base, args.worker_method).to(device)
    run = make_runner(args.worker_method, net)
    x_seq, y = _inputs(args.input_shape, args.batch, args.worker_T, device, classes=classes)
    return memory_of(run, x_seq, y, device)


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__}
    try:
        import psutil

        info["memory_bytes"] = psutil.virtual_memory().total
    except ImportError:  # pragma: no cover
        pass
    try:
        import spikingjelly

        info["spikingjelly"] = getattr(spikingjelly, "__version__", "2.0.0")
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:  # pragma: no cover
        pass
    info["malloc_env"] = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    return info


def _fresh_memory(args, method: str, T: int) -> dict:
    cmd = [sys.executable, "-m", "saf_plugin.benchmark", "--worker-method", method,
           "--worker-T", str(T), "--net", args.net, "--width-div", str(args.width_div),
           "--batch", str(args.batch), "--input-shape", ",".join(map(str, args.input_shape)),
           "--hidden", str(args.hidden), "--device", args.device]
    if args.model:
        cmd += ["--model", args.model]
    if args.fix:
        cmd.append("--fix")
    path = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.getcwd(),
                                         os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=path)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["worker failed"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def benchmark(args) -> dict:
    def say(msg: str, end: str = "\n") -> None:
        if not args.quiet:
            print(msg, end=end, file=sys.stderr, flush=True)

    device = torch.device(args.device)
    base = _base(args, say)
    if args.methods is None:
        args.methods = list(methods_for(base))
    runners, errors = {}, {}
    for m in args.methods:
        try:
            runners[m] = make_runner(m, variant(base, m).to(device))
        except Exception as e:  # a user model may not support every method
            errors[m] = f"{type(e).__name__}: {e}"
            if "fix" in str(e) and not args.fix:
                errors[m] += " (--fix applies saf_plugin.fix first)"
    times: dict = {(m, T): [] for m in runners for T in args.T}
    stopped: dict = {}  # method -> the T at which one iteration took longer than --max-seconds
    classes = num_classes(base, args.input_shape)
    inputs = {T: _inputs(args.input_shape, args.batch, T, device, classes=classes) for T in args.T}
    plan = [(r, T) for r in range(args.warmup) for T in args.T[:1]]
    plan += [(r, T) for r in range(args.warmup, args.warmup + args.repeats) for T in args.T]
    total, done = len(plan) * len(runners), 0
    say(f"timing {', '.join(runners)} at T={','.join(map(str, args.T))}: {args.warmup} warm-up "
        f"and {args.repeats} timed iteration(s) each, interleaved")
    for r, T in plan:
        for m in list(runners):
            done += 1
            if m in stopped and T > stopped[m]:
                continue
            what = "warm-up" if r < args.warmup else f"repeat {r - args.warmup + 1}/{args.repeats}"
            say(f"[{done}/{total}] {what} T={T} {m} ... ", end="")
            try:
                dt = time_iteration(runners[m], *inputs[T], device)
            except Exception as e:
                say("failed")
                errors[m] = f"{type(e).__name__}: {e}"
                del runners[m]
                continue
            say(f"{dt:.2f} s")
            if r >= args.warmup:
                times[(m, T)].append(dt)
                if args.max_seconds and dt > args.max_seconds and m not in stopped:
                    stopped[m] = T
                    say(f"{m}: {dt:.0f} s > --max-seconds {args.max_seconds:g} at T={T}; "
                        "larger T skipped")
    rows = []
    todo = [(m, T) for (m, T), ts in times.items() if m in runners and ts]
    memory = [(m, T) for m, T in todo if not args.no_memory and (not args.memory_T or T in args.memory_T)]
    for m, T in todo:
        ts = times[(m, T)]
        row = {"net": args.model or args.net, "method": m, "T": T, "batch": args.batch,
               "time_median_s": statistics.median(ts), "time_min_s": min(ts),
               "time_max_s": max(ts), "repeats": len(ts)}
        if (m, T) in memory:
            say(f"[memory {memory.index((m, T)) + 1}/{len(memory)}] fresh process, T={T} {m} ... ",
                end="")
            row.update(_fresh_memory(args, m, T))
            say(f"{row['peak_rss_bytes'] / 2**20:.0f} MiB peak RSS" if "peak_rss_bytes" in row
                else row.get("error", ""))
        rows.append(row)
    return {"machine": machine(), "config": {
        "net": args.model or args.net, "width_div": args.width_div, "batch": args.batch,
        "input_shape": args.input_shape, "T": args.T, "repeats": args.repeats,
        "warmup": args.warmup, "device": args.device, "methods": args.methods,
        "memory_T": args.memory_T or ([] if args.no_memory else args.T),
        "max_seconds": args.max_seconds, "fix": args.fix, "library": library(base),
        "note": args.note},
        "rows": rows, "errors": errors, "stopped": stopped}


# --------------------------------------------------------------------------- output


def ratios(rows: list[dict]) -> list[dict]:
    """The issue's target ratios per T, from median times and peak RSS."""
    for r in rows:
        if "peak_rss_bytes" in r and "rss_before_bytes" in r:
            r["rss_increase_bytes"] = r["peak_rss_bytes"] - r["rss_before_bytes"]
    by = {(r["method"], r["T"]): r for r in rows}
    out = []
    for T in sorted({r["T"] for r in rows}):
        def q(a, b, key="time_median_s"):
            ra, rb = by.get((a, T)), by.get((b, T))
            if not ra or not rb or key not in ra or key not in rb or not rb[key]:
                return None
            return ra[key] / rb[key]
        out.append({"T": T,
                    "saf_e_online/ottt time": q("saf_e_online", "ottt"),
                    "saf_e_online/relu time": q("saf_e_online", "relu"),
                    "saf_f/ottt time": q("saf_f", "ottt"),
                    "saf_e_multi/bptt time": q("saf_e_multi", "bptt"),
                    "saf_e_online/ottt peak rss": q("saf_e_online", "ottt", "peak_rss_bytes"),
                    "saf_e_online/ottt rss increase": q("saf_e_online", "ottt",
                                                        "rss_increase_bytes"),
                    "saf_e_online/ottt saved": q("saf_e_online", "ottt", "saved_peak_bytes"),
                    "saf_e_online/bptt time": q("saf_e_online", "bptt"),
                    "saf_f/bptt time": q("saf_f", "bptt"),
                    "saf_e_online/bptt saved": q("saf_e_online", "bptt", "saved_peak_bytes")})
    return out


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (the docs paste it)."""
    def mib(r, key, fmt):
        return "" if key not in r else format(r[key] / 2**20, fmt)

    lines = ["| method | T | time median [s] | min-max [s] | saved for backward [MiB] | "
             "peak RSS [MiB] | RSS increase in the iteration [MiB] |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        peak = "cuda_peak_bytes" if "cuda_peak_bytes" in r else "peak_rss_bytes"
        lines.append(f"| {r['method']} | {r['T']} | {r['time_median_s']:.3f} | "
                     f"{r['time_min_s']:.3f}-{r['time_max_s']:.3f} | "
                     f"{mib(r, 'saved_peak_bytes', '.1f')} | {mib(r, peak, '.0f')} | "
                     f"{mib(r, 'rss_increase_bytes', '.0f')} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = f"{'method':<13} {'T':>3} {'time med [s]':>12} {'min-max [s]':>17} {'saved [MB]':>10} {'peak RSS [MB]':>13}"
    lines = [head, "-" * len(head)]
    for r in rows:
        saved = r.get("saved_peak_bytes")
        rss = r.get("cuda_peak_bytes", r.get("peak_rss_bytes"))
        lines.append(f"{r['method']:<13} {r['T']:>3} {r['time_median_s']:>12.4f} "
                     f"{r['time_min_s']:>8.4f}-{r['time_max_s']:<8.4f} "
                     f"{'' if saved is None else f'{saved / 2**20:.1f}':>10} "
                     f"{'' if rss is None else f'{rss / 2**20:.0f}':>13}")
    return "\n".join(lines)


def write(result: dict, name: str, results_dir: Path, plot_dir: Optional[Path]) -> list[Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    result["ratios"] = ratios(result["rows"])
    paths = [results_dir / f"{name}.json", results_dir / f"{name}.csv"]
    paths[0].write_text(json.dumps(result, indent=1))
    keys = sorted({k for r in result["rows"] for k in r})
    with open(paths[1], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(result["rows"])
    if plot_dir is not None:
        paths += plot(result, name, plot_dir)
    return paths


def plot(result: dict, name: str, plot_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    methods += sorted({r["method"] for r in rows} - set(methods))
    out = []
    specs = [("time", [("time_median_s", "time per iteration [s]", 1.0)]),
             ("memory", [("peak_rss_bytes", "peak RSS of a fresh process [MiB]", 2**20),
                         ("saved_peak_bytes", "saved for backward, peak [MiB]", 2**20)])]
    for kind, panels in specs:
        panels = [p for p in panels if any(p[0] in r for r in rows)]
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, (key, label, scale) in zip(axes[0], panels):
            for m in methods:
                pts = sorted((r["T"], r[key] / scale, r) for r in rows
                             if r["method"] == m and key in r)
                if not pts:
                    continue
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                if key == "time_median_s":
                    lo = [p[1] - p[2]["time_min_s"] for p in pts]
                    hi = [p[2]["time_max_s"] - p[1] for p in pts]
                    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=m)
                else:
                    ax.plot(xs, ys, marker="o", label=m)
            ts = sorted({r["T"] for r in rows})
            if ts[-1] >= 8 * ts[0]:  # a sweep over T: log axes, T labelled as measured
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xticks(ts, [str(t) for t in ts])
            ax.set_xlabel("T (time steps)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        cfg = result["config"]
        fig.suptitle(f"{cfg['net']} (width/{cfg['width_div']}), batch {cfg['batch']}, "
                     f"{result['machine'].get('gpu') or result['machine'].get('cpu_model', 'CPU')}",
                     fontsize=9)
        fig.tight_layout()
        p = plot_dir / f"{name}_{kind}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p)
    return out


# --------------------------------------------------------------------------- command line


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _methods(text: str) -> list[str]:
    vals = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in vals if v not in METHODS]
    if bad or not vals:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(bad) or text!r}; "
                                         f"valid: {', '.join(METHODS)}")
    return vals


def methods_help() -> str:
    """One line per method, for ``--help``."""
    return "methods:\n" + "\n".join(f"  {m:<13} {METHOD_HELP[m]}" for m in METHODS) + (
        "\n  (snnTorch models: " + ", ".join(SNNTORCH_METHODS) + ")")


def parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=methods_help())
    p.add_argument("--net", choices=("vgg", "mlp", "snntorch6"), default="vgg",
                   help="vgg: OTTT's CIFAR VGG (SpikingJelly); mlp: 784-512-512-10 "
                   "(SpikingJelly); snntorch6: snnTorch tutorial 6's CSNN with average pooling")
    p.add_argument("--model", default=None, help="MODULE:CALLABLE building a SpikingJelly or "
                   "snnTorch model (replaces --net)")
    p.add_argument("--fix", action="store_true",
                   help="apply saf_plugin.fix to the model first (MaxPool -> AvgPool, hard -> "
                   "soft reset), for every method")
    p.add_argument("--width-div", type=int, default=1, help="divide every VGG width by this")
    p.add_argument("--hidden", type=int, default=512, help="MLP hidden width")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--input-shape", type=_ints, default=None, help="C,H,W (default 3,32,32; "
                   "mlp 784; snntorch6 1,28,28)")
    p.add_argument("--T", type=_ints, default=[2, 4, 8, 16, 32])
    p.add_argument("--methods", type=_methods, default=None,
                   help="comma-separated (default: every method the model's library supports)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per method, at "
                   "the smallest T")
    p.add_argument("--max-seconds", type=float, default=0.0, help="skip a method at larger T "
                   "once one of its iterations took longer than this (0: no limit)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory runs")
    p.add_argument("--memory-T", type=_ints, default=None,
                   help="measure memory only at these T (default: every T)")
    p.add_argument("--name", default=None, help="output file stem (default <net>_<device>)")
    p.add_argument("--results-dir", type=Path, default=Path("benchmarks") / "results")
    p.add_argument("--plot-dir", type=Path, default=Path("docs") / "benchmarks")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--note", default="", help="free text stored with the results")
    p.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)  # progress is default
    p.add_argument("--worker-method", help=argparse.SUPPRESS)
    p.add_argument("--worker-T", type=int, help=argparse.SUPPRESS)
    return p


def main(argv: Optional[list[str]] = None, *, defaults: Optional[dict] = None) -> dict:
    p = parser()
    if defaults:
        p.set_defaults(**defaults)
    args = p.parse_args(argv)
    if args.input_shape is None:
        args.input_shape = ({"mlp": [784], "snntorch6": [1, 28, 28]}.get(args.net, [3, 32, 32])
                            if not args.model else [3, 32, 32])
    if args.worker_method:
        print(json.dumps(worker(args)))
        return {}
    result = benchmark(args)
    name = args.name or f"{'custom' if args.model else args.net}_{args.device}"
    paths = write(result, name, args.results_dir, None if args.no_plot else args.plot_dir)
    print(table(result["rows"]))
    for m, e in result["errors"].items():
        print(f"{m}: skipped ({e})")
    for m, T in result["stopped"].items():
        print(f"{m}: stopped after T={T} (an iteration took longer than --max-seconds)")
    for r in result["ratios"]:
        known = [f"{k} {v:.2f}" for k, v in r.items() if k != "T" and v is not None]
        if known:  # a ratio needs both of its methods in --methods
            print(f"T={r['T']}: " + ", ".join(known))
    print("wrote " + ", ".join(str(p) for p in paths))
    return result


if __name__ == "__main__":
    main()
