"""The benchmark loop: every method timed with interleaved repeats in this process, then the
memory of each (method, T) in a fresh worker process (``python -m saf_plugin.bench
--worker-method M --worker-T T ...``)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .factory import build_model
from .measure import machine, make_inputs, memory_of, num_classes, time_iteration
from .models import VGG, library, methods_for, mlp, snntorch_csnn
from .variants import make_runner, variant

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder that holds saf_plugin/


def _base(args, say: Callable = lambda msg: None) -> nn.Module:
    torch.manual_seed(0)
    if args.model:
        net = build_model(args.model)
    elif args.net == "vgg":
        net = VGG(args.width_div)
    elif args.net == "snntorch6":
        net = snntorch_csnn()
    else:
        net = mlp(int(torch.tensor(args.input_shape).prod()), args.hidden)
    if args.fix:
        import saf_plugin

        for change in saf_plugin.fix(net, soft_reset=True):
            say(f"fix: {change.line()}")
    return net


def worker(args) -> dict:
    """Fresh-process memory measurement of one (method, T)."""
    device = torch.device(args.device)
    base = _base(args)
    classes = num_classes(base, args.input_shape)
    net = variant(base, args.worker_method).to(device)
    run = make_runner(args.worker_method, net)
    x_seq, y = make_inputs(args.input_shape, args.batch, args.worker_T, device, classes=classes)
    return memory_of(run, x_seq, y, device)


def _runners(args, base: nn.Module, device) -> tuple[dict, dict]:
    """(method -> its runner on its variant of ``base``, method -> why it cannot run)."""
    runners, errors = {}, {}
    for m in args.methods:
        try:
            runners[m] = make_runner(m, variant(base, m).to(device))
        except ValueError as e:  # the method cannot run this model (SAF's refusals too)
            errors[m] = str(e)
            if "saf_plugin.fix" in str(e) and not args.fix:
                errors[m] += "\n  (--fix applies saf_plugin.fix(net, soft_reset=True) first)"
        except Exception as e:  # pragma: no cover - a failure nobody foresaw: say what it was
            errors[m] = f"{type(e).__name__}: {e}"
    return runners, errors


def _time_all(args, runners: dict, errors: dict, device, classes: int, say) -> tuple[dict, dict]:
    """Interleaved timing: ((method, T) -> seconds of each timed iteration, method -> the T at
    which one iteration took longer than --max-seconds). A method that fails is dropped from
    ``runners``, its error kept in ``errors``."""
    times: dict = {(m, T): [] for m in runners for T in args.T}
    stopped: dict = {}  # method -> the T at which one iteration took longer than --max-seconds
    inputs = {T: make_inputs(args.input_shape, args.batch, T, device, classes=classes) for T in args.T}
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
                dt = time_iteration(runners[m], *inputs[T])
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
    return times, stopped


def _rows(args, runners: dict, times: dict, say) -> list[dict]:
    """One row per timed (method, T), with its memory measured in a fresh process."""
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
    return rows


def _fresh_memory(args, method: str, T: int) -> dict:
    cmd = [sys.executable, "-m", "saf_plugin.bench", "--worker-method", method,
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
    """Time every method of ``args.methods`` at every T (interleaved repeats), then measure
    the memory of each (method, T) in a fresh process; the result as ``saf bench`` writes it."""
    def say(msg: str, end: str = "\n") -> None:
        if not args.quiet:
            print(msg, end=end, file=sys.stderr, flush=True)

    device = torch.device(args.device)
    base = _base(args, say)
    if args.methods is None:
        args.methods = list(methods_for(base))
    runners, errors = _runners(args, base, device)
    classes = num_classes(base, args.input_shape)
    times, stopped = _time_all(args, runners, errors, device, classes, say)
    rows = _rows(args, runners, times, say)
    return {"machine": machine(), "config": {
        "net": args.model or args.net, "width_div": args.width_div, "batch": args.batch,
        "input_shape": args.input_shape, "T": args.T, "repeats": args.repeats,
        "warmup": args.warmup, "device": args.device, "methods": args.methods,
        "memory_T": args.memory_T or ([] if args.no_memory else args.T),
        "max_seconds": args.max_seconds, "fix": args.fix, "library": library(base),
        "note": args.note},
        "rows": rows, "errors": errors, "stopped": stopped}
