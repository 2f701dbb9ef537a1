"""The SAF neuron scan on a GPU: effective memory bandwidth of each backend vs the device's.

Device bandwidth: a large device-to-device copy (read + write). Scan traffic counted as the
minimum the scan must move: forward reads Y and writes â (8 B/element in fp32) plus the
saved tensor (4 B), backward reads it and dL/dâ and writes dL/dY (12 B). Writes JSON to
benchmarks/results/scan_<device>.json.

    python benchmarks/gpu_scan_bench.py --T 6,16 --numel 16777216
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")


def timed(fn, reps=10):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--T", default="6,16")
    p.add_argument("--numel", type=int, default=1 << 24)
    args = p.parse_args()
    from saf_plugin import kernels

    try:
        from spikingjelly.activation_based import surrogate
        sur = surrogate.Sigmoid(alpha=4.0)
    except ImportError:  # pragma: no cover
        sur = torch.sigmoid
    big = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    copy_s = timed(lambda: big.clone())
    bw = 2 * big.numel() / copy_s
    rows = []
    for T in (int(t) for t in args.T.split(",")):
        n = args.numel // T
        y = torch.randn(T, n, device="cuda") + 0.8
        g = torch.randn(T, n, device="cuda")
        for backend in ("torch", "cupy"):
            ok, why = kernels.available(backend, y, sur)
            if not ok:
                rows.append({"T": T, "backend": backend, "skipped": why})
                continue
            yy = y.clone().requires_grad_(True)
            fwd = timed(lambda: kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur, backend=backend))

            def fb():
                acc, _ = kernels.scan(yy, None, lam=0.5, theta=1.0, surrogate=sur, backend=backend)
                acc.backward(g)
            both = timed(fb)
            nel = T * n
            rows.append({"T": T, "backend": backend, "numel": nel, "forward_s": fwd,
                         "forward_backward_s": both,
                         "forward_bw_fraction": 12 * nel / fwd / bw,
                         "fwd_bwd_bw_fraction": 24 * nel / both / bw})
            print(rows[-1], flush=True)
    out = {"device": torch.cuda.get_device_name(), "copy_bandwidth_GBps": bw / 1e9, "rows": rows}
    dest = ROOT / "benchmarks" / "results"
    dest.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name().replace(" ", "_")
    (dest / f"scan_{name}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
