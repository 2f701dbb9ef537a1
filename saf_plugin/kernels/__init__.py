"""The SAF neuron as fused kernels: the multi-step scan (step mode 'm') and the one-step
operation (step mode 's'), each a lookup in one table of backends; :mod:`saf_plugin.core` is
the oracle.

    acc_seq, acc_last = kernels.scan(y_seq, acc_prev, lam=λ, theta=θ, input_scale=ρ,
                                     surrogate=σ, mode="E")
    acc, spikes = kernels.step(y, acc_prev, lam=λ, theta=θ, input_scale=ρ, surrogate=σ,
                               mode="E")

``y`` is Y[t], the layer's input current accumulated with the neuron's own λ (docs/theory.md,
"Spike accumulation and the SAF forward"); per step, â[t−1] a constant (detached):

    u[t] = ρ Y[t] − θ λ â[t−1],   s[t] = H(u[t] − θ),   â[t] = λ â[t−1] + s[t]

(ρ = 1 − λ with SpikingJelly's ``decay_input``, None for 1; â[−1] = 0). SAF-E's backward is
element-wise, ∂L/∂Y[t] = ρ σ'(u[t] − θ) (∂L/∂â[t] + ∂L/∂s[t]); SAF-F's is the Spike
Representation's at the last step (:func:`saf_plugin.core.saf_f_step`), none before.

Backends (``backend=``), one module each with the same three functions:

- ``"torch"`` (:mod:`.torch_scan`): everywhere, any float dtype, any surrogate; its step is the
  oracle itself, its scan a custom autograd Function bit-identical to the oracle in forward.
- ``"cpu"`` (:mod:`.cpu_scan`): CPU tensors; C++ operators compiled with g++ at first use,
  bit-identical to the oracle in forward and in SAF-E gradient for SpikingJelly's ``Sigmoid``
  and ``ATan`` (other surrogates: not available), and in SAF-F gradient.
- ``"triton"`` (:mod:`.triton_scan`): CUDA (or CPU tensors under ``TRITON_INTERPRET=1``);
  forward bit-identical to the oracle; SAF-E needs a SpikingJelly 2.0 surrogate with a Triton
  derivative (its gradient agrees to float rounding); SAF-F needs none.
- ``"cupy"`` (:mod:`.cupy014`): CUDA with SpikingJelly 0.0.0.0.14 and CuPy; a scan with the
  surrogate's ``cuda_codes`` as derivative (spikes identical, gradients to float rounding);
  its step is the PyTorch one.
- ``"auto"``: on CUDA the first of ``"triton"``, ``"cupy"``, ``"torch"`` that can run (it warns
  once per reason when it has to fall back to ``"torch"``); on CPU ``"cpu"`` where it can run,
  else ``"torch"`` (it warns once if the operators cannot be built, e.g. without a compiler;
  other surrogates use ``"torch"`` silently; ``SAF_PLUGIN_NO_CPU_SCAN=1`` turns ``"cpu"`` off).

An explicit backend that cannot run raises :class:`BackendUnavailableError` with the reason.

The backend interface: every module in :data:`MODULES` defines

- ``available(y, surrogate, mode) -> (bool, why)``: can it run inputs like ``y`` (its device
  and dtype) with ``surrogate`` (SAF-E) in ``mode``;
- ``scan(y, acc0, *, lam, theta, scale, surrogate, mode, c, grad, spikes)`` on ``y``
  [T, B, ...]: returns (â [T, B, ...] in y's dtype, with the SAF-E or SAF-F graph when
  ``grad``; the last â in the state dtype (fp64 for fp64, else fp32), detached; the spikes
  [T, B, ...] with the gradient of â when ``spikes`` and the backend writes them in its pass,
  else None);
- ``step(y, acc0, *, lam, theta, scale, surrogate, mode, c, grad)`` on ``y`` [B, ...] (fp32 or
  fp64): returns (â[t], s[t]) in y's dtype with graph when ``grad``; s[t] is â[t] itself at
  t = 0 (``acc0`` None), and None in SAF-F.

It gets ``acc0`` = â[t0−1] detached (None at t = 0; in the state dtype for the scan, in y's
for the step), λ, θ and ρ as floats (ρ None for 1), ``c`` = c[t] (SAF-F: the bias series at
the step, or at the scan's last step, as a 0-d tensor on y's device; else None), and
``grad`` = whether autograd records the call.

SpikingJelly 2.0's own multi-step neuron ops are not a backend: they run the LIF recurrence
on de-accumulated input I[t] = Y[t] − λY[t−1] (other rounding, so spikes flip at the
threshold) and their backward is BPTT through v, not SAF-E's element-wise gradient.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from .. import core
from ..errors import SAFError
from ..modes import Mode
from . import cpu_scan, cupy014, torch_scan, triton_scan
from .cupy014 import spikingjelly_is_legacy

__all__ = ["scan", "step", "available", "module", "BackendUnavailableError", "BACKENDS",
           "MODULES", "reset_warnings", "spikingjelly_is_legacy"]

MODULES = {"torch": torch_scan, "cpu": cpu_scan, "triton": triton_scan, "cupy": cupy014}
BACKENDS = ("auto", *MODULES)
AUTO = {False: ("cpu",), True: ("triton", "cupy")}  # on CUDA or not: tried before "torch"
_WARNED: set[str] = set()


class BackendUnavailableError(SAFError):
    """An explicitly requested kernel backend cannot run these inputs here."""


def reset_warnings() -> None:
    """Forget which fallbacks have been warned about (tests)."""
    _WARNED.clear()


def module(name: str):
    """The module of backend ``name`` (each imports only torch; their compilers and GPU
    libraries at first use)."""
    found = MODULES.get(name)
    if found is None:
        raise ValueError(f"unknown scan backend {name!r}; valid: {BACKENDS}")
    return found


def available(backend_name: str, y: Tensor, surrogate: Optional[Callable] = None,
              mode: str = Mode.E) -> tuple[bool, str]:
    """(can ``backend_name`` run inputs like ``y`` with ``surrogate``?, why not)."""
    return module(backend_name).available(y, surrogate, mode)


def _is_cuda(y: Tensor) -> bool:
    return y.is_cuda


def _choose(name: str, y: Tensor, surrogate, mode: str) -> str:
    """The backend that runs: ``name`` where it can (else raise), or the "auto" choice."""
    if name != "auto":
        ok, why = available(name, y, surrogate, mode)
        if not ok:
            raise BackendUnavailableError(f"kernel backend {name!r} cannot run: {why}")
        return name
    cuda = _is_cuda(y)
    reasons = []
    for candidate in AUTO[cuda]:
        ok, why = available(candidate, y, surrogate, mode)
        if ok:
            return candidate
        reasons.append((candidate, why))
    if cuda:
        why = "; ".join(f"{n}: {w}" for n, w in reasons)
        if why not in _WARNED:
            _WARNED.add(why)
            warnings.warn(f"saf_plugin.kernels: no fused SAF kernel here ({why}); "
                          "falling back to backend 'torch'", RuntimeWarning, stacklevel=3)
    else:
        why = reasons[0][1]
        if why == cpu_scan.why() and why not in _WARNED:  # not built: say so once
            _WARNED.add(why)
            warnings.warn(f"saf_plugin.kernels: {why}; falling back to backend 'torch'",
                          RuntimeWarning, stacklevel=3)
    return "torch"


def _check_mode(mode: str) -> None:
    if mode not in (Mode.E, Mode.F):
        raise ValueError(f"mode must be 'E' or 'F', not {mode!r}")


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
    """SAF neuron scan over the T steps of ``y_seq`` [T, B, ...], step for step the same as
    :func:`saf_plugin.core.saf_e_step` (mode "E") or :func:`saf_plugin.core.saf_f_step` at the
    last step with steps 0..T−2 graph-free (mode "F").

    ``acc_prev`` is â[t0−1] (None at t = 0), ``input_scale`` ρ (None for 1), ``c_last`` the
    series c[t] at the last step (mode "F"; default c[T−1] from t0 = 0). Returns (â
    [T, B, ...] in ``y_seq``'s dtype, with the SAF-E or SAF-F graph when grad is enabled; the
    last â in the state dtype, detached). With ``spikes=True`` a third item: the spikes,
    [T, B, ...], where the backend writes them in the same pass (``"cpu"``, SAF-E), with the
    gradient of â[t]; else None. fp16/bf16 run fp32 state and arithmetic.
    """
    _check_mode(mode)
    which = _choose(backend, y_seq, surrogate, mode)
    sd = torch.float64 if y_seq.dtype == torch.float64 else torch.float32
    prev = None if acc_prev is None else acc_prev.detach().to(sd)
    c = None
    if mode == Mode.F:
        c = (core.bias_series(0, y_seq.shape[0], lam, like=y_seq.new_empty(0, dtype=sd))[-1]
             if c_last is None else torch.as_tensor(c_last, dtype=sd, device=y_seq.device))
    grad = torch.is_grad_enabled() and y_seq.requires_grad
    out = module(which).scan(
        y_seq, prev, lam=float(lam), theta=float(theta),
        scale=None if input_scale is None else float(input_scale), surrogate=surrogate,
        mode=mode, c=c, grad=grad, spikes=spikes)
    return out if spikes else out[:2]


def step(
    y: Tensor,
    acc_prev: Optional[Tensor],
    *,
    lam: float,
    theta: float,
    input_scale: Optional[float] = None,
    surrogate: Callable[[Tensor], Tensor],
    mode: str = Mode.E,
    c: Optional[Tensor] = None,
    backend: str = "auto",
) -> tuple[Tensor, Optional[Tensor]]:
    """One SAF neuron step on ``y`` = Y[t], shape [B, ...], fp32 or fp64; bit-identical to
    :func:`saf_plugin.core.lif_spike` and :func:`~saf_plugin.core.accumulate_step` (mode "E")
    or :func:`saf_plugin.core.saf_f_step` (mode "F") on ρ Y[t], forward and gradient (the
    Triton backend's SAF-E gradient: to float rounding).

    ``acc_prev`` is â[t−1] (None at t = 0), a constant; ``c`` the series c[t] as a 0-d tensor
    (mode "F"). Returns (â[t], s[t]) in y's dtype, with graph when grad is enabled; s[t] is
    â[t] itself at t = 0, and None in mode "F". On the fused backends that is one operator
    forward and one backward. fp16/bf16 input runs the PyTorch step, which computes in that
    dtype as the oracle does.
    """
    _check_mode(mode)
    if mode == Mode.F and c is None:
        raise ValueError("mode 'F' needs c, the bias series c[t] at this step (a 0-d tensor)")
    if y.dtype not in (torch.float32, torch.float64):
        which = "torch"
    else:
        which = _choose(backend, y, surrogate, mode)
    if acc_prev is not None and acc_prev.requires_grad:
        acc_prev = acc_prev.detach()
    return module(which).step(
        y, acc_prev, lam=lam, theta=theta, scale=input_scale, surrogate=surrogate, mode=mode,
        c=c, grad=torch.is_grad_enabled() and y.requires_grad)
