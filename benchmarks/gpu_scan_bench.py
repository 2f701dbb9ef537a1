"""The SAF neuron scan on a GPU: effective bandwidth of each backend as a fraction of the
bandwidth of a device-to-device copy measured on the same device.

Bytes counted are the least the scan must move per element (es = bytes of the input dtype;
the state and the saved z are fp32):

    forward without gradient   read Y, write â                      2·es      (fp32:  8 B)
    forward with gradient      read Y, write â and z                2·es + 4  (fp32: 12 B)
    SAF-E backward             read ∂L/∂â and z, write ∂L/∂Y        2·es + 4  (fp32: 12 B)

The copy reads and writes each byte once: bandwidth = 2 · bytes / time. Every row is written
to ``--out`` (JSON) as soon as it is measured.

    python benchmarks/gpu_scan_bench.py --T 6,16 --numel 16777216 --out scan.json
    python benchmarks/gpu_scan_bench.py --device cpu --numel 4096 --reps 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")


def timed(fn, device, reps: int) -> float:
    """Seconds per call of ``fn`` (after one warm-up call)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / reps / 1e3
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def copy_bandwidth(device, nbytes: int, reps: int) -> float:
    """Bytes per second of ``dst.copy_(src)`` (read + write)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / timed(lambda: dst.copy_(src), device, reps)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", default="6,16")
    p.add_argument("--numel", type=int, default=1 << 24, help="elements per scan, T·N")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--backends", default="torch,triton,cupy")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--sweep", action="store_true", help="also time the Triton forward for "
                   "each BLOCK (neurons per program) and num_warps (fp32, the largest T)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: "
                   "benchmarks/results/scan_<device name>.json)")
    args = p.parse_args(argv)
    from saf_plugin import kernels

    device = torch.device(args.device)
    try:
        from spikingjelly.activation_based import surrogate
        sur = surrogate.Sigmoid(alpha=4.0)
    except ImportError:  # pragma: no cover
        sur = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = args.out or ROOT / "benchmarks" / "results" / f"scan_{name.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    bw = copy_bandwidth(device, max(1 << 28 if device.type == "cuda" else 1 << 20,
                                    args.numel * 4), args.reps)
    result = {"device": name, "copy_bandwidth_GBps": bw / 1e9, "numel": args.numel, "rows": []}

    def record(row):
        result["rows"].append(row)
        out.write_text(json.dumps(result, indent=2))
        print(json.dumps(row), flush=True)

    for T in (int(t) for t in args.T.split(",")):
        n = args.numel // T
        for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
            es = torch.tensor([], dtype=dtype).element_size()
            y = (torch.randn(T, n, device=device) + 0.8).to(dtype)
            g = torch.randn(T, n, device=device).to(dtype)
            for backend in args.backends.split(","):
                row = {"T": T, "dtype": str(dtype).replace("torch.", ""), "backend": backend}
                ok, why = kernels.available(backend, y, sur)
                if not ok:
                    record(dict(row, skipped=why))
                    continue
                yy = y.clone().requires_grad_(True)

                def fwd():
                    kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur, backend=backend)

                def fwd_bwd():
                    acc, _ = kernels.scan(yy, None, lam=0.5, theta=1.0, surrogate=sur,
                                          backend=backend)
                    acc.backward(g)

                f = timed(fwd, device, args.reps)
                fb = timed(fwd_bwd, device, args.reps)
                nel = T * n
                record(dict(row, numel=nel, forward_s=f, forward_backward_s=fb,
                            forward_bytes_per_element=2 * es,
                            forward_bw_fraction=2 * es * nel / f / bw,
                            fwd_bwd_bytes_per_element=4 * es + 8,
                            fwd_bwd_bw_fraction=(4 * es + 8) * nel / fb / bw))
    if args.sweep:
        sweep(args, device, bw, record)
    return result


def sweep(args, device, bw: float, record) -> None:
    """Forward time of the Triton scan per launch configuration (no gradient, fp32)."""
    from saf_plugin.kernels import triton_kernels

    T = max(int(t) for t in args.T.split(","))
    n = args.numel // T
    y = torch.randn(T, n, device=device) + 0.8
    default = (triton_kernels.BLOCK, triton_kernels.NUM_WARPS)
    try:
        for block in (128, 256, 512, 1024, 2048):
            for warps in (1, 2, 4, 8, 16):
                if block < 32 * warps:
                    continue
                triton_kernels.BLOCK, triton_kernels.NUM_WARPS = block, warps
                f = timed(lambda: triton_kernels._forward(y, None, 0.5, 1.0, None, False), device,
                          args.reps)
                record({"T": T, "dtype": "float32", "backend": "triton", "block": block,
                        "num_warps": warps, "numel": T * n, "forward_s": f,
                        "forward_bw_fraction": 8 * T * n / f / bw})
    finally:
        triton_kernels.BLOCK, triton_kernels.NUM_WARPS = default


if __name__ == "__main__":
    main()
