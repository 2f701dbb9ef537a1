"""Where one training iteration's time goes on a GPU: wall time against the time the GPU is
busy, kernel launches and host synchronisations, per method, from torch.profiler.

    python benchmarks/gpu_profile.py --out results.json     # OTTT's VGG and snnTorch's CSNN

A method whose wall time is far above its GPU time is bound by the host (Python, launches);
synchronisations (cudaStreamSynchronize, device-to-host copies) stall the queue.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from saf_plugin.bench.measure import make_inputs  # noqa: E402
from saf_plugin.bench.variants import make_runner, variant  # noqa: E402

SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def models(which: list[str]):
    from saf_plugin.bench import models as M

    if "vgg" in which:
        yield "vgg", M.VGG(1), (3, 32, 32), 128, 6, ("bptt", "ottt", "saf_e_online", "saf_e_multi", "saf_f")
    if "snntorch6" in which:
        yield "snntorch6", M.snntorch_csnn(), (1, 28, 28), 64, 25, ("bptt", "saf_e_online", "saf_f")


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_one(run, x, y) -> dict:
    cuda = x.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
        run(x, y)
        sync(x.device)
    events = prof.key_averages()
    count = {e.key: e.count for e in events}
    gpu_us = sum(e.self_device_time_total for e in events
                 if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return {"gpu_busy_s": gpu_us / 1e6,
            "launches": sum(count.get(k, 0) for k in LAUNCHES),
            "syncs": sum(count.get(k, 0) for k in SYNCS),
            "memcpy_calls": count.get("cudaMemcpyAsync", 0),
            "top_self_cpu": [(e.key, e.count, round(e.self_cpu_time_total / 1e3, 2)) for e in top]}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default="vgg,snntorch6")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=None, help="instead of each net's own")
    p.add_argument("--T", type=int, default=None, help="instead of each net's own")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name_of = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    for name, base, shape, batch, T, methods in models(args.nets.split(",")):
        batch, T = args.batch or batch, args.T or T
        torch.manual_seed(0)
        x, y = make_inputs(shape, batch, T, device, classes=10)
        for method in methods:
            try:
                run = make_runner(method, variant(base, method).to(device))
                for _ in range(2):
                    run(x, y)
                times = []
                for _ in range(args.repeats):
                    sync(device)
                    t0 = time.perf_counter()
                    run(x, y)
                    sync(device)
                    times.append(time.perf_counter() - t0)
                row = {"net": name, "method": method, "batch": batch, "T": T,
                       "wall_s": statistics.median(times), **profile_one(run, x, y)}
            except Exception as e:  # one method failing must not lose the others
                row = {"net": name, "method": method, "error": f"{type(e).__name__}: {e}"}
            rows.append(row)
            args.out.write_text(json.dumps({"device": name_of, "rows": rows},
                                           indent=1))
            print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
