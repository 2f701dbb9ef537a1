"""One dispatcher for the SAF multi-step neuron scan; :mod:`saf_plugin.core` is the oracle.

    acc_seq, acc_last = saf_plugin.kernels.scan(y_seq, acc_prev, lam=λ, theta=θ,
                                                input_scale=None, surrogate=σ, mode="E")

``y_seq`` [T, B, ...] is Y[t], the layer's accumulated input; the result â[t], shape [T, B, ...], is
the same, step for step, as :func:`saf_plugin.core.saf_e_step` (mode "E") or
:func:`saf_plugin.core.saf_f_step` at the last step with steps 0..T−2 graph-free (mode "F"):

    u[t] = ρ Y[t] − θ λ â[t−1],   â[t] = λ â[t−1] + H(u[t] − θ)      (â[t−1] a constant)

Backends (``backend=``):

- ``"torch"``: everywhere; a custom autograd Function, bit-identical to the oracle, that saves
  one tensor per step. On CUDA with SpikingJelly 2.0 the surrogate's backward is the one the
  surrogate itself dispatches.
- ``"triton"``: CUDA (or CPU tensors under ``TRITON_INTERPRET=1``), fp32/fp16/bf16 input;
  Triton kernels (:mod:`.triton_scan`) whose forward is bit-identical to ``"torch"``. SAF-E
  needs a SpikingJelly 2.0 surrogate with a Triton derivative (Sigmoid, ATan, ...); SAF-F
  needs none.
- ``"cupy"``: CUDA with SpikingJelly 0.0.0.0.14 and CuPy; CUDA C kernels (:mod:`.cupy014`)
  with the surrogate's ``cuda_codes`` as derivative. Spikes are identical to the oracle;
  surrogate gradients agree to float rounding.
- ``"cpu"``: CPU tensors; one C++ operator (:mod:`.cpu_scan`, compiled with g++ at first use)
  whose forward and Sigmoid/ATan gradients are bit-identical to ``"torch"``. SAF-E needs a
  SpikingJelly ``Sigmoid`` or ``ATan`` surrogate; SAF-F needs none.
- ``"auto"``: on CUDA the first of ``"triton"``, ``"cupy"``, ``"torch"`` that can run (it warns
  once per reason when it has to fall back to ``"torch"``); on CPU ``"cpu"`` where it can run,
  else ``"torch"`` (it warns once if the operator cannot be built, e.g. without a compiler;
  other surrogates use ``"torch"`` silently; ``SAF_PLUGIN_NO_CPU_SCAN=1`` turns ``"cpu"`` off).

SpikingJelly 2.0's own multi-step neuron ops are not a backend: they run the LIF recurrence
on de-accumulated input I[t] = Y[t] − λY[t−1] (other rounding, so spikes flip at the
threshold) and their backward is BPTT through v, not SAF-E's element-wise gradient.

fp16/bf16 inputs run with fp32 state (and fp32 arithmetic); â is returned in the input dtype,
the fp32 last state separately. fp64 stays fp64 (``"torch"`` and ``"cpu"``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from .. import core
from ..errors import SAFError
from .torch_scan import TorchScan, _fire, forward_scan
from ..modes import Mode

__all__ = ["scan", "available", "BackendUnavailableError", "BACKENDS", "reset_warnings"]

BACKENDS = ("auto", "torch", "cpu", "triton", "cupy")
_WARNED: set[str] = set()


class BackendUnavailableError(SAFError):
    """An explicitly requested scan backend cannot run these inputs here."""


def reset_warnings() -> None:
    """Forget which fallbacks have been warned about (tests)."""
    _WARNED.clear()


def spikingjelly_is_legacy() -> bool:
    """True when the imported SpikingJelly is 0.0.0.0.14 (no ``__version__``; the CuPy kernels'
    generation). False when SpikingJelly has not been imported."""
    sj = sys.modules.get("spikingjelly")
    if sj is None:
        return False
    version = getattr(sj, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version("spikingjelly")
        except Exception:  # not installed as a distribution
            version = ""
    return str(version).startswith("0.0.0.0.")


def available(backend: str, y: Tensor, surrogate: Optional[Callable] = None,
              mode: str = Mode.E) -> tuple[bool, str]:
    """(can ``backend`` run the scan of ``y`` with ``surrogate``?, why not)."""
    if backend == "torch":
        return True, ""
    if backend == "triton":
        return _triton_available(y, surrogate, mode)
    if backend == "cpu":
        return _cpu_available(y, surrogate, mode)
    if backend == "cupy":
        if not y.is_cuda:
            return False, "the CuPy kernels need CUDA tensors"
        if y.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return False, f"the CuPy kernels run fp32 state for fp32/fp16/bf16, not {y.dtype}"
        if not spikingjelly_is_legacy():
            return False, "the CuPy kernels need SpikingJelly 0.0.0.0.14 (auto_cuda)"
        if importlib.util.find_spec("cupy") is None:
            return False, "CuPy is not installed"
        if mode == Mode.E:
            from .cupy014 import surrogate_codes

            if surrogate_codes(surrogate) is None:
                return False, (f"surrogate {type(surrogate).__name__} has no CUDA code "
                               "(SpikingJelly 0.0.0.0.14 cuda_codes)")
        return True, ""
    raise ValueError(f"unknown scan backend {backend!r}; valid: {BACKENDS}")


def _choose(backend: str, y: Tensor, surrogate, mode: str) -> str:
    if backend != "auto":
        ok, why = available(backend, y, surrogate, mode)
        if not ok:
            raise BackendUnavailableError(f"scan backend {backend!r} cannot run: {why}")
        return backend
    if not _is_cuda(y):
        ok, why = available("cpu", y, surrogate, mode)
        if ok:
            return "cpu"
        from . import cpu_scan

        if why == cpu_scan.why() and why not in _WARNED:  # not built: say so once
            _WARNED.add(why)
            warnings.warn(f"saf_plugin.kernels: {why}; using the PyTorch scan", RuntimeWarning,
                          stacklevel=3)
        return "torch"
    reasons = []
    for name in ("triton", "cupy"):
        ok, why = available(name, y, surrogate, mode)
        if ok:
            return name
        reasons.append(f"{name}: {why}")
    why = "; ".join(reasons)
    if why not in _WARNED:
        _WARNED.add(why)
        warnings.warn(f"saf_plugin.kernels: no fused SAF scan kernel here ({why}); "
                      "using the PyTorch scan", RuntimeWarning, stacklevel=3)
    return "torch"


def _triton_available(y: Tensor, surrogate, mode: str) -> tuple[bool, str]:
    if y.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return False, f"the Triton kernels run fp32 state for fp32/fp16/bf16, not {y.dtype}"
    interpret = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")
    if not (y.is_cuda or interpret):
        return False, "the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1)"
    try:
        from . import triton_scan
    except Exception as e:  # noqa: BLE001 - not installed, or no working driver
        return False, f"Triton cannot be used ({type(e).__name__}: {e})"
    if mode == Mode.E and triton_scan.surrogate_spec(surrogate) is None:
        return False, (f"surrogate {type(surrogate).__name__} has no Triton derivative "
                       "(SpikingJelly 2.0 surrogates with a float alpha have one)")
    return True, ""


def _cpu_available(y: Tensor, surrogate, mode: str) -> tuple[bool, str]:
    from . import cpu_scan

    if y.device.type != "cpu":
        return False, "the C++ scan needs CPU tensors"
    if y.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return False, f"the C++ scan runs fp32/fp64 state, not for {y.dtype}"
    if mode == Mode.E and cpu_scan.surrogate_kind(surrogate) is None:
        return False, (f"surrogate {type(surrogate).__name__} has no C++ derivative "
                       "(SpikingJelly's Sigmoid and ATan have one)")
    if os.environ.get("SAF_PLUGIN_NO_CPU_SCAN", "") not in ("", "0"):
        return False, "SAF_PLUGIN_NO_CPU_SCAN is set"
    if not cpu_scan.load():
        return False, cpu_scan.why()
    return True, ""


def _is_cuda(y: Tensor) -> bool:
    return y.is_cuda


def _state_dtype(y: Tensor) -> torch.dtype:
    return torch.float64 if y.dtype == torch.float64 else torch.float32


def scan(
    y_seq: Tensor,
    acc_prev: Optional[Tensor],
    *,
    lam: float,
    theta: float,
    input_scale: Optional[float] = None,
    surrogate: Callable[[Tensor], Tensor],
    mode: str = Mode.E,
    c_last: Union[float, Tensor, None] = None,
    backend: str = "auto",
    spikes: bool = False,
):
    """SAF neuron scan over the T steps of ``y_seq`` [T, B, ...].

    ``acc_prev`` is â[t0−1] (None at t = 0), ``input_scale`` ρ (None for 1), ``c_last`` the
    series c[t] at the last step (mode "F"). Returns (â [T, B, ...] in ``y_seq``'s dtype, with
    the SAF-E or SAF-F graph when grad is enabled; the last â in the state dtype, detached).
    With ``spikes=True`` a third item: the spikes, shape [T, B, ...], where the backend writes
    them in the same pass (``"cpu"``, SAF-E), with the gradient of â[t]; else None.
    """
    if mode not in (Mode.E, Mode.F):
        raise ValueError(f"mode must be 'E' or 'F', not {mode!r}")
    which = _choose(backend, y_seq, surrogate, mode)
    sd = _state_dtype(y_seq)
    prev = None if acc_prev is None else acc_prev.detach().to(sd)
    grad = torch.is_grad_enabled() and y_seq.requires_grad
    if which == "triton":
        from . import triton_scan  # registers torch.ops.saf_plugin.scan_e / scan_f

        scale = None if input_scale is None else float(input_scale)
        if mode == Mode.E:
            sid, alpha = triton_scan.surrogate_spec(surrogate)
            acc, _, last = torch.ops.saf_plugin.scan_e(y_seq, prev, float(lam), float(theta),
                                                       scale, sid, alpha, grad)
        else:
            like = y_seq.new_empty(0, dtype=torch.float32)
            c = c_last if c_last is not None else core.bias_series(0, y_seq.shape[0], lam,
                                                                   like=like)[-1]
            c = torch.as_tensor(c, dtype=torch.float32, device=y_seq.device)
            acc, last, _ = torch.ops.saf_plugin.scan_f(y_seq, prev, float(lam), float(theta),
                                                       scale, c)
        return (acc, last.detach()) + ((None,) if spikes else ())  # the state: no graph
    scale = None if input_scale is None else float(input_scale)
    spk = None
    if mode == Mode.E:
        if which == "cupy":
            from .cupy014 import CupyScan

            acc = CupyScan.apply(y_seq, prev, float(lam), float(theta), input_scale, surrogate)
        elif which == "cpu":
            from . import cpu_scan

            run = cpu_scan.scan_e if grad else cpu_scan.scan_nograd
            acc, spk = run(y_seq.to(sd), prev, float(lam), float(theta), scale, surrogate, spikes)
            spk = None if spk is None else spk.to(y_seq.dtype)
        elif grad:
            acc = TorchScan.apply(y_seq, prev, float(lam), float(theta), input_scale, surrogate, sd)
        else:
            acc, _ = forward_scan(y_seq.detach().to(sd), prev, float(lam), float(theta),
                                  input_scale, _fire(surrogate), save_z=False)
        out = acc.to(y_seq.dtype), acc[-1].detach().to(sd)
        return out + ((spk,) if spikes else ())
    # SAF-F: steps 0..T-2 without a graph (by the chosen backend), the last with the oracle.
    T = y_seq.shape[0]
    head = None
    if T > 1:
        with torch.no_grad():
            if which == "cupy":
                from .cupy014 import CupyScan

                head = CupyScan.apply(y_seq[:-1], prev, float(lam), float(theta), input_scale, None)
            elif which == "cpu":
                from . import cpu_scan

                head = cpu_scan.scan_nograd(y_seq[:-1].to(sd), prev, float(lam), float(theta),
                                            scale)[0]
            else:
                head, _ = forward_scan(y_seq[:-1].detach().to(sd), prev, float(lam), float(theta),
                                       input_scale, core.heaviside, save_z=False)
        prev = head[-1]
    last = y_seq[-1].to(sd, copy=True)  # a copy: the graph must not keep [T, ...] alive
    if input_scale is not None:
        last = last * input_scale
    c = c_last if c_last is not None else core.bias_series(0, T, lam, like=last)[-1]
    if torch.is_tensor(c):
        c = c.to(sd)
    with torch.set_grad_enabled(grad):
        acc_last, _ = core.saf_f_step(last, prev, float(lam), float(theta), c)
    acc = acc_last.unsqueeze(0) if head is None else torch.cat([head, acc_last.unsqueeze(0)])
    return (acc.to(y_seq.dtype), acc_last.detach()) + ((None,) if spikes else ())

