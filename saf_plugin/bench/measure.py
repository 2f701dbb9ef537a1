"""Measuring one training iteration: wall time (``torch.utils.benchmark``), the bytes autograd
saves for backward, the resident memory (psutil before, the process's peak after) or the CUDA
peak; the inputs; the machine the numbers come from."""

from __future__ import annotations

import copy
import os
import platform
from typing import Callable

import psutil
import torch
from torch import nn
from torch.utils.benchmark import Timer

from .models import library


def time_iteration(run: Callable, x_seq, y) -> float:
    """Seconds of one ``run(x_seq, y)`` with the process's torch threads (``Timer``
    synchronises the accelerator around it)."""
    timer = Timer("run(x_seq, y)", globals={"run": run, "x_seq": x_seq, "y": y},
                  num_threads=torch.get_num_threads())
    return timer.timeit(1).median


def memory_of(run: Callable, x_seq, y, device) -> dict:
    """One iteration under the saved-tensor meter, in a fresh process (``run.worker``): the
    RSS before it, the process's peak RSS after it (``getrusage``; in a fresh process the
    iteration is what sets it), and on CUDA the peak allocated by torch."""
    from ..memory import SavedTensorMeter, peak_rss_bytes

    rss0 = psutil.Process().memory_info().rss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with SavedTensorMeter(exclude=[x_seq]) as meter:
        run(x_seq, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out = {"saved_peak_bytes": meter.peak, "saved_total_bytes": meter.total,
           "rss_before_bytes": rss0, "peak_rss_bytes": peak_rss_bytes()}
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


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
    info["memory_bytes"] = psutil.virtual_memory().total
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
