"""The ``saf`` command line: ``saf check`` and ``saf bench`` on a user's model factory.

    saf check mypkg.models:make_net
    saf bench mypkg.models:make_net --input-shape 3,32,32 --T 4,8,16 --methods bptt,saf_e_online

``MODULE:CALLABLE`` names a function (or class) that takes no arguments and returns a
SpikingJelly or snnTorch model; ``MODULE`` is imported with the current directory on ``sys.path``.
Exit codes: 0 fine, 1 the model is not exact under SAF (check) or a method failed (bench),
2 bad arguments or a factory that cannot be imported or called.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional

from .modes import Mode

__all__ = ["main", "load_factory"]


class CLIError(Exception):
    """A user error reported as one line, exit code 2."""


def load_factory(spec: str) -> Callable:
    """Import ``MODULE:CALLABLE`` (CALLABLE may be dotted) and return the callable."""
    from .bench.factory import FactoryError, load_factory as load

    try:
        return load(spec)
    except FactoryError as e:
        raise CLIError(str(e)) from None


def build_model(spec: str):
    from torch import nn

    factory = load_factory(spec)
    try:
        net = factory()
    except Exception as e:
        raise CLIError(f"{spec}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(net, nn.Module):
        raise CLIError(f"{spec}() returned {type(net).__name__}, not a torch.nn.Module")
    return net


def findings_table(findings) -> str:
    rows = [("path", "module", "status", "reason", "fix")]
    rows += [(f.path or "<root>", f.module, f.status, f.reason, f.fix or "") for f in findings]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, r in enumerate(rows):
        head = "  ".join(r[k].ljust(widths[k]) for k in range(3))
        tail = r[3] + (f" | fix: {r[4]}" if r[4] and i else (" | fix" if i == 0 else ""))
        lines.append(f"{head}  {tail}")
        if i == 0:
            lines.append("-" * min(100, len(lines[0]) + 10))
    return "\n".join(lines)


def cmd_check(args) -> int:
    import saf_plugin

    net = build_model(args.model)
    findings = saf_plugin.check(net)
    print(findings_table(findings))
    bad = [f for f in findings if f.status != "exact"]
    if bad:
        print(f"not exact: {len(bad)} of {len(findings)} modules are unsupported (the fix "
              "column says what to change)")
        return 1
    per_step = [f for f in saf_plugin.check(net, mode=Mode.F) if f.status != "exact"]
    if per_step:
        print(f"exact under SAF-E: all {len(findings)} modules; SAF-F refuses "
              f"{len(per_step)} (neurons without a closed form run per step, SAF-E only; "
              "saf_plugin.fix(net, soft_reset=True), or saf bench --fix, gives them the closed "
              "form by switching to soft reset)")
        return 0
    print(f"exact: all {len(findings)} modules; set_saf(net, 'E' or 'F') reproduces the forward")
    return 0


def cmd_bench(args) -> int:
    from .bench.main import main as bench_main

    build_model(args.model)  # fail early, in one line
    argv = ["--model", args.model, "--input-shape", args.input_shape, "--T", args.T,
            "--batch", str(args.batch), "--repeats", str(args.repeats),
            "--warmup", str(args.warmup), "--results-dir", str(args.out),
            "--max-seconds", str(args.max_seconds)]
    if args.methods:
        argv += ["--methods", args.methods]
    if args.device:
        argv += ["--device", args.device]
    if args.plot is None:
        argv.append("--no-plot")
    else:
        argv += ["--plot-dir", str(args.plot)]
    if args.no_memory:
        argv.append("--no-memory")
    if args.fix:
        argv.append("--fix")
    if args.quiet:
        argv.append("--quiet")
    result = bench_main(argv)
    return 1 if result.get("errors") else 0


def parser() -> argparse.ArgumentParser:
    from .bench.methods import METHODS, SNNTORCH_METHODS, methods_help

    p = argparse.ArgumentParser(prog="saf", description="Spike Accumulation Forwarding tools: "
                                "check a model for SAF, benchmark it against BPTT/OTTT/SLTT.")
    sub = p.add_subparsers(dest="command", metavar="{check,bench}")
    c = sub.add_parser("check", help="print the SAF compatibility table of a model",
                       description="Import MODULE:CALLABLE, build the model and print, per module, "
                       "whether SAF is exact, why, and how to fix it. Exit 1 when not exact.")
    c.add_argument("model", metavar="MODULE:CALLABLE")
    b = sub.add_parser("bench", help="time and memory per training iteration: SAF-E, SAF-F "
                       "against BPTT, OTTT, SLTT and a ReLU bound",
                       description="Benchmark MODULE:CALLABLE (a SpikingJelly model with LIF "
                       "neurons, or an snnTorch model with snn.Leaky) under each method, with "
                       "interleaved repeats; progress goes to stderr. SpikingJelly models: "
                       + ", ".join(METHODS) + " (ottt needs a model made of plain nn.Sequential "
                       "blocks); snnTorch models: " + ", ".join(SNNTORCH_METHODS) + ".",
                       epilog=methods_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("model", metavar="MODULE:CALLABLE")
    b.add_argument("--input-shape", required=True, metavar="C,H,W",
                   help="shape of one sample without batch and time, e.g. 3,32,32 or 784")
    b.add_argument("--T", default="4,8,16", help="time steps, comma-separated (default 4,8,16)")
    b.add_argument("--methods", default=None,
                   help="comma-separated subset of " + ",".join(METHODS) + " (default: all that "
                   "the model's library supports)")
    b.add_argument("--fix", action="store_true",
                   help="apply saf_plugin.fix(net) first (MaxPool -> AvgPool, hard -> soft "
                   "reset) so a model that check reports as fixable can be benchmarked")
    b.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    b.add_argument("--repeats", type=int, default=3,
                   help="timed iterations per method and T, interleaved (default 3)")
    b.add_argument("--warmup", type=int, default=1,
                   help="untimed iterations per method at the smallest T (default 1)")
    b.add_argument("--device", default=None, help="cpu or cuda (default cuda if available)")
    b.add_argument("--max-seconds", type=float, default=0.0,
                   help="stop a method at the T where one iteration took longer (0: no limit)")
    b.add_argument("--quiet", action="store_true", help="no progress lines")
    b.add_argument("--no-memory", action="store_true",
                   help="skip the fresh-process memory measurement")
    b.add_argument("--out", type=Path, default=Path("saf-bench"),
                   help="folder for the JSON and CSV results (default ./saf-bench)")
    b.add_argument("--plot", type=Path, default=None, metavar="DIR",
                   help="also write time/memory plots (png) into DIR")
    return p


def _validate_bench(args) -> None:
    from .bench.methods import METHODS

    for name, text in (("--input-shape", args.input_shape), ("--T", args.T)):
        try:
            vals = [int(v) for v in text.split(",")]
        except ValueError:
            raise CLIError(f"{name} expects comma-separated integers, got {text!r}") from None
        if not vals or min(vals) <= 0:
            raise CLIError(f"{name} expects positive integers, got {text!r}")
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
