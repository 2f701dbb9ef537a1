"""Measuring one training iteration: wall time, the bytes autograd saves for backward, peak RSS
(Linux: this process's VmHWM, reset before the iteration) or the CUDA peak; the inputs; the
machine the numbers come from."""

from __future__ import annotations

import copy
import os
import platform
import time
from typing import Callable

import torch
from torch import nn

from .models import library


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
    from ..training import SavedTensorMeter, peak_rss_bytes

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
    from ..training import reset_state

    net = copy.deepcopy(base)
    if library(base) == "spikingjelly":
        from spikingjelly.activation_based import functional

        functional.set_step_mode(net, "s")
    with torch.no_grad():
        out = net(torch.zeros(1, *shape))
        reset_state(net)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return int(out.shape[-1])


def make_inputs(shape, batch, T, device, dtype=torch.float32, seed=0, classes=10):
    """Direct encoding: one random image per sample, shown at every step. ``x_seq`` is a
    [T, B, ...] view of one [B, ...] tensor, so the input's memory does not grow with T (a
    materialised copy would add B·C·H·W·4 bytes per step to every method's peak RSS)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *shape, generator=g).to(device, dtype)
    y = torch.randint(0, classes, (batch,), generator=g)
    return x.unsqueeze(0).expand(T, *x.shape), y.to(device)


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
