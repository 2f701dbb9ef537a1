"""The host-bound regime: tiny networks at small batches, where the Python around every
operation costs more than the arithmetic (what a GPU sees at ordinary batch sizes).

One process, interleaved repeats (repeat r: every method once), medians; aten operations per
iteration counted with a ``TorchDispatchMode`` (a proxy for GPU kernel launches). Methods:

- ``plain_step``, ``relu_online``, ``bptt``, ``ottt``, ``sltt``, ``relu``: as in ``saf bench``
  (``saf_plugin/bench/methods.py``): ``plain_step`` is the plain model stepped one step at a
  time with its state detached after each step and an update every step (OTTT's rule without
  traces: the floor a per-step method can reach), ``relu_online`` the ReLU network with an
  update every step (the floor for ``saf_e_online``'s operation count: ``relu`` updates once
  per sequence);
- ``saf_e_online``, ``saf_f``: ``set_saf(net, "E"/"F")``, ``train_step``; ``saf_e``: SAF-E
  with a backward every step and one update per sequence (as ``relu`` updates);
- ``<method>+compile``: the same with the model wrapped in ``torch.compile`` (Inductor on
  CPU): for SAF the engine itself runs eagerly inside (docs/faq.md, "torch.compile?").

    python benchmarks/host_bound.py --net tiny_vgg --repeats 15 --name host_tiny_vgg
    python benchmarks/host_bound.py --net snntorch6 --batch 8 --repeats 9 --name host_snntorch6
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from saf_plugin.bench.measure import machine  # noqa: E402
from saf_plugin.bench.models import VGG, snntorch_csnn  # noqa: E402
from saf_plugin.bench.variants import make_runner, variant  # noqa: E402


class OpCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def runner(base, method: str):
    compile_ = method.endswith("+compile")
    name = method.removesuffix("+compile")
    net = variant(base, "saf_e_online" if name == "saf_e" else name)
    if compile_:
        import saf_plugin

        mode = saf_plugin.saf_mode(net)
        if mode is not None:
            saf_plugin.set_saf(net, None)
            net = torch.compile(net)
            saf_plugin.set_saf(net, mode)
        else:
            net = torch.compile(net)
    if name == "saf_e":
        from saf_plugin.training import train_step

        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        return lambda x_seq, y: train_step(net, x_seq, y, lambda o, t: F.cross_entropy(o, t)
                                           / x_seq.shape[0], opt)
    return make_runner(name, net)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--net", choices=["tiny_vgg", "snntorch6"], default="tiny_vgg")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--T", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--methods", default=None,
                    help="comma-separated; default: every method that fits the net")
    ap.add_argument("--name", default=None, help="write benchmarks/results/NAME.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.net == "tiny_vgg":
        base, shape = VGG(width_div=32), (3, 8, 8)
        methods = ["plain_step", "relu", "relu_online", "bptt", "ottt", "sltt", "saf_e_online", "saf_e",
                   "saf_f", "plain_step+compile", "saf_e_online+compile"]
    else:
        base, shape = snntorch_csnn(), (1, 28, 28)
        methods = ["plain_step", "bptt", "saf_e_online", "saf_e", "saf_f",
                   "plain_step+compile", "saf_e_online+compile"]
    if args.methods:
        methods = args.methods.split(",")
    classes = 10
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.T, args.batch, *shape, generator=g)
    y = torch.randint(0, classes, (args.batch,), generator=g)
    runs = {m: runner(base, m) for m in methods}
    ops = {}
    for m, run in runs.items():
        for _ in range(args.warmup):
            run(x, y)
        with OpCount() as c:
            run(x, y)
        ops[m] = sum(c.count.values())
    times = {m: [] for m in runs}
    for _ in range(args.repeats):
        for m, run in runs.items():
            t0 = time.perf_counter()
            run(x, y)
            times[m].append(time.perf_counter() - t0)
    med = {m: statistics.median(ts) for m, ts in times.items()}
    rows = [{"method": m, "time_median_s": med[m], "time_min_s": min(times[m]),
             "time_max_s": max(times[m]), "aten_ops": ops[m]} for m in runs]
    ref = med.get("plain_step")
    print(f"{args.net}, batch {args.batch}, T={args.T}, {args.threads} thread(s), "
          f"{args.repeats} interleaved repeats (medians)")
    print(f"{'method':24} {'ms':>8} {'/plain':>7} {'/ottt':>7} {'aten ops':>9}")
    for r in rows:
        m = r["method"]
        rel = lambda k: f"{med[m] / med[k]:7.2f}" if k in med else "      -"
        print(f"{m:24} {med[m] * 1e3:8.2f} {rel('plain_step')} {rel('ottt')} {ops[m]:9d}")
    if args.name:
        out = ROOT / "benchmarks" / "results" / f"{args.name}.json"
        out.write_text(json.dumps({"machine": machine(), "config": vars(args), "rows": rows},
                                  indent=1))
        print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
