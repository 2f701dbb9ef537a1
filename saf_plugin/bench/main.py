"""Time and memory of one training iteration: SAF against BPTT, OTTT, SLTT and a ReLU bound.

One process times every method with interleaved repeats (repeat r: for each T, for each
method, one iteration), so machine noise hits all methods alike; medians and min-max are
reported. The warm-up iterations (``--warmup``, not timed) run each method at the smallest T.
With ``--max-seconds S`` a method whose iteration took longer than S seconds at some T is not
run at larger T. Progress goes to stderr, one line per iteration. Memory per (method, T)
comes from a fresh worker process each: the peak bytes autograd keeps for backward
(``saf_plugin.training.SavedTensorMeter``) and the peak RSS (CPU) or
``torch.cuda.max_memory_allocated`` (GPU) of one iteration.

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
    python -m saf_plugin.bench ...            (the same; ``saf bench`` runs it on your model)

Writes <results-dir>/<name>.json and .csv and the figure <plot-dir>/<name>.png
(``benchmarks/bench.py``: benchmarks/results/ and docs/benchmarks/ of the repository).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch

from .methods import METHODS, methods_help
from .report import table, write
from .run import benchmark, worker


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


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, the epilog kept as written."""


def parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=_Help, epilog=methods_help())
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
    p.add_argument("--batch", type=int, default=16, help="batch size")
    p.add_argument("--input-shape", type=_ints, default=None, help="C,H,W (None: 3,32,32; "
                   "mlp 784; snntorch6 1,28,28)")
    p.add_argument("--T", type=_ints, default=[2, 4, 8, 16, 32], help="time steps, comma-separated")
    p.add_argument("--methods", type=_methods, default=None,
                   help="comma-separated (None: every method the model's library supports)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed iterations per method and T, interleaved")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per method, at "
                   "the smallest T")
    p.add_argument("--max-seconds", type=float, default=0.0, help="skip a method at larger T "
                   "once one of its iterations took longer than this (0: no limit)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda")
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory runs")
    p.add_argument("--memory-T", type=_ints, default=None,
                   help="measure memory only at these T (None: every T)")
    p.add_argument("--name", default=None, help="output file stem (None: <net>_<device>, or custom_<device> with --model)")
    p.add_argument("--results-dir", type=Path, default=Path("benchmarks") / "results",
                   help="folder for the JSON and CSV results")
    p.add_argument("--plot-dir", type=Path, default=Path("docs") / "benchmarks",
                   help="folder for the time and memory plots")
    p.add_argument("--no-plot", action="store_true", help="write no plots")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--note", default="", help="free text stored with the results")
    p.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)  # progress is default
    p.add_argument("--worker-method", help=argparse.SUPPRESS)
    p.add_argument("--worker-T", type=int, help=argparse.SUPPRESS)
    return p


def warnings_for(args) -> list[str]:
    """What makes the numbers of a run misleading, said before it starts."""
    out = []
    if args.warmup == 0:
        out.append("--warmup 0: each method's first timed iteration also pays one-time costs "
                   "(lazy initialisation, allocator growth, the first use of the C++ scan), so "
                   "the times at the first T are not comparable between methods")
    if len(args.T) == 1:
        out.append(f"a single T ({args.T[0]}): memory and time cannot be seen to grow (or stay "
                   "flat) with T; give several, e.g. --T 4,8,16")
    return out


def main(argv: Optional[list[str]] = None, *, defaults: Optional[dict] = None) -> dict:
    """Run the benchmark (or, with ``--worker-method``, one memory measurement) and return
    its result; ``defaults`` overrides the parser's defaults (``benchmarks/bench.py``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Triton not available")
        return _main(argv, defaults)


def _main(argv: Optional[list[str]], defaults: Optional[dict]) -> dict:
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
    for warning in warnings_for(args):
        print(f"warning: {warning}", file=sys.stderr)
    result = benchmark(args)
    name = args.name or f"{'custom' if args.model else args.net}_{args.device}"
    paths = write(result, name, args.results_dir, None if args.no_plot else args.plot_dir)
    print(table(result["rows"]))
    for m, e in result["errors"].items():
        print(f"{m}: skipped: {e}")
    for m, T in result["stopped"].items():
        print(f"{m}: stopped after T={T} (an iteration took longer than --max-seconds)")
    for r in result["ratios"]:
        known = [f"{k} {v:.2f}" for k, v in r.items() if k != "T" and v is not None]
        if known:  # a ratio needs both of its methods in --methods
            print(f"T={r['T']}: " + ", ".join(known))
    print("wrote " + ", ".join(str(p) for p in paths))
    return result
