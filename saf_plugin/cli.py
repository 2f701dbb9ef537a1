"""The ``saf`` command line: ``saf check`` and ``saf bench`` on a model factory.

    saf check saf_plugin.bench.models:mlp
    saf check saf_plugin.bench.models:mlp --input-shape 784
    saf bench saf_plugin.bench.models:mlp --input-shape 784 --T 4,8,16

``MODULE:CALLABLE`` names a function (or class) that takes no arguments and returns a
SpikingJelly or snnTorch model; it is resolved with :func:`pkgutil.resolve_name`, with the
current directory on ``sys.path``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Optional

from .modes import Mode

__all__ = ["main"]

EXIT_CODES = """exit status:
  0  check: the model is exact under SAF-E; bench: every method ran
  1  check: a module is not exact (the table says which and how to fix it);
     bench: a method was skipped or failed (the output says why)
  2  bad arguments, or a factory that cannot be imported, called or does not return a model"""


class CLIError(Exception):
    """A user error reported as one line, exit code 2."""


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, description and epilog kept as written."""


def build_model(spec: str):
    from .bench.factory import FactoryError, build_model as build

    try:
        return build(spec)
    except FactoryError as e:
        raise CLIError(str(e)) from None


def example_input(net, shape: list[int], batch: int, T: int):
    """A random input for one call of ``net``: [batch, *shape], or [T, batch, *shape] when
    its neurons run in step mode 'm'."""
    import torch

    from .registry import module_step_mode

    multi = any(module_step_mode(m) == "m" for m in net.modules())
    return torch.rand(*([T] if multi else []), batch, *shape)


def cmd_check(args) -> int:
    import saf_plugin

    net = build_model(args.model)
    findings = neurons = saf_plugin.check(net)
    bad = [f for f in findings if f.status != "exact"]
    if args.input_shape and not bad:
        x = example_input(net, args.input_shape, args.batch, args.T)
        try:
            findings = saf_plugin.check(net, x)
        except Exception as e:  # the model's own error: wrong --input-shape, mostly
            raise CLIError(f"the model failed on an input {list(x.shape)}: "
                           f"{type(e).__name__}: {e}") from None
        bad = [f for f in findings if f.status != "exact"]
    print(findings)
    if bad:
        print(f"not exact: {len(bad)} of {len(findings)} findings are unsupported (the fix "
              "column says what to change)")
        return 1
    if args.input_shape:
        ops = findings[len(neurons):]
        per_step = sum("per step on the real values" in f.reason for f in ops)
        print(f"one call with input {list(x.shape)}: {len(ops)} operations, {per_step} per step "
              f"on the real values, {len(ops) - per_step} once per step on accumulations")
    refused_f = [f for f in saf_plugin.check(net, mode=Mode.F) if f.status != "exact"]
    if refused_f:
        print(f"exact under SAF-E: all {len(neurons)} neurons; SAF-F refuses {len(refused_f)} "
              "(neurons without a closed form run per step, SAF-E only; "
              "saf_plugin.fix(net, soft_reset=True), or saf bench --fix, gives them the closed "
              "form by switching to soft reset)")
    else:
        print(f"exact: all {len(neurons)} neurons; set_saf(net, 'E' or 'F') reproduces the "
              "forward" + ("" if args.input_shape else
                           " (--input-shape also lists every operation's route)"))
    return 0


def cmd_bench(args) -> int:
    from .bench.main import main as bench_main

    build_model(args.model)  # fail early, in one line
    argv = ["--model", args.model, "--input-shape", ",".join(map(str, args.input_shape)),
            "--T", args.T, "--batch", str(args.batch), "--repeats", str(args.repeats),
            "--warmup", str(args.warmup), "--results-dir", str(args.out),
            "--max-seconds", str(args.max_seconds)]
    for flag, value in (("--methods", args.methods), ("--device", args.device),
                        ("--name", args.name)):
        if value:
            argv += [flag, value]
    argv += ["--no-plot"] if args.plot is None else ["--plot-dir", str(args.plot)]
    argv += [flag for flag, on in (("--no-memory", args.no_memory), ("--fix", args.fix),
                                   ("--quiet", args.quiet)) if on]
    result = bench_main(argv)
    return 1 if result.get("errors") else 0


def _shape(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if min(vals) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def parser() -> argparse.ArgumentParser:
    from .bench.methods import METHODS, SNNTORCH_METHODS, methods_help

    p = argparse.ArgumentParser(prog="saf", description="Spike Accumulation Forwarding tools: "
                                "check a model for SAF, benchmark it against BPTT/OTTT/SLTT.",
                                epilog=EXIT_CODES, formatter_class=_Help)
    sub = p.add_subparsers(dest="command", metavar="{check,bench}")
    c = sub.add_parser("check", help="print what SAF makes of a model: neurons, refusals and, "
                       "with --input-shape, every operation's route", formatter_class=_Help,
                       description="Import MODULE:CALLABLE, build the model and print, per "
                       "neuron and refused module, whether SAF is exact, why, and how to fix "
                       "it. With --input-shape it also runs a copy of the model once under SAF "
                       "and lists every operation of the forward: once per step on "
                       "accumulations (SAF's saving) or per step on the real values.",
                       epilog=EXIT_CODES)
    c.add_argument("model", metavar="MODULE:CALLABLE")
    c.add_argument("--input-shape", type=_shape, default=None, metavar="C,H,W",
                   help="shape of one sample without batch and time, e.g. 3,32,32 or 784")
    c.add_argument("--batch", type=int, default=2, help="batch size of the example input")
    c.add_argument("--T", type=int, default=4,
                   help="time steps of the example input of a model in step mode 'm'")
    b = sub.add_parser("bench", help="time and memory per training iteration: SAF-E, SAF-F "
                       "against BPTT, OTTT, SLTT and a ReLU bound",
                       description="Benchmark MODULE:CALLABLE (a SpikingJelly model with LIF "
                       "neurons, or an snnTorch model with snn.Leaky) under each method, with "
                       "interleaved repeats; progress goes to stderr. SpikingJelly models: "
                       + ", ".join(METHODS) + " (ottt needs a model made of plain nn.Sequential "
                       "blocks); snnTorch models: " + ", ".join(SNNTORCH_METHODS) + ".",
                       epilog=methods_help() + "\n\n" + EXIT_CODES, formatter_class=_Help)
    b.add_argument("model", metavar="MODULE:CALLABLE")
    b.add_argument("--input-shape", type=_shape, required=True, metavar="C,H,W",
                   help="shape of one sample without batch and time, e.g. 3,32,32 or 784")
    b.add_argument("--T", default="4,8,16", help="time steps, comma-separated")
    b.add_argument("--methods", default=None,
                   help="comma-separated subset of " + ",".join(METHODS) + " (default: all that "
                   "the model's library supports)")
    b.add_argument("--fix", action="store_true",
                   help="apply saf_plugin.fix(net, soft_reset=True) first (MaxPool -> AvgPool, "
                   "hard -> soft reset), for every method")
    b.add_argument("--batch", type=int, default=16, help="batch size")
    b.add_argument("--repeats", type=int, default=3,
                   help="timed iterations per method and T, interleaved")
    b.add_argument("--warmup", type=int, default=1,
                   help="untimed iterations per method at the smallest T")
    b.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    b.add_argument("--max-seconds", type=float, default=0.0,
                   help="stop a method at the T where one iteration took longer (0: no limit)")
    b.add_argument("--quiet", action="store_true", help="no progress lines")
    b.add_argument("--no-memory", action="store_true",
                   help="skip the fresh-process memory measurement")
    b.add_argument("--out", type=Path, default=Path("saf-bench"),
                   help="folder for the JSON and CSV results")
    b.add_argument("--name", default=None,
                   help="file stem of the results and plots (default: custom_<device>)")
    b.add_argument("--plot", type=Path, default=None, metavar="DIR",
                   help="also write time/memory plots (png) into DIR")
    return p


def _validate_bench(args) -> None:
    from .bench.methods import METHODS

    try:
        vals = [int(v) for v in args.T.split(",")]
    except ValueError:
        raise CLIError(f"--T expects comma-separated integers, got {args.T!r}") from None
    if min(vals) <= 0:
        raise CLIError(f"--T expects positive integers, got {args.T!r}")
    if args.methods:
        bad = [m for m in args.methods.split(",") if m not in METHODS]
        if bad:
            raise CLIError(f"unknown method(s) {', '.join(bad)}; valid: {', '.join(METHODS)}")
    for name in ("batch", "repeats"):
        if getattr(args, name) <= 0:
            raise CLIError(f"--{name} must be positive")


def main(argv: Optional[list[str]] = None) -> int:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Triton not available")
        return _main(argv)


def _main(argv: Optional[list[str]]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    try:
        if args.command == "check":
            return cmd_check(args)
        _validate_bench(args)
        return cmd_bench(args)
    except CLIError as e:
        print(f"saf: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
