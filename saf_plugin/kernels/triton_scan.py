"""Backend ``"triton"``: the SAF scan and step as Triton kernels (:mod:`.triton_kernels`,
:mod:`.triton_step`), on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (how the
tests run them).

The scan takes fp32, fp16 and bf16 input (fp32 state and arithmetic; â in the input dtype);
the step fp32 (the dispatcher gives it fp32 or fp64 only). Forward: bit-identical to
:mod:`saf_plugin.core`. SAF-E's gradient uses SpikingJelly 2.0's Triton surrogate derivative
(Sigmoid, ATan, PiecewiseQuadratic, PiecewiseExp, SoftSign, SuperSpike, Erf), which agrees with
the surrogate's PyTorch backward to float rounding; SAF-F needs no surrogate, and its gradient
follows PyTorch's clamp/minimum/division rules exactly. This module imports Triton only when
:func:`available` has found the inputs fit, so it loads where Triton is missing.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from ..modes import Mode

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _kernels():
    from . import triton_kernels  # registers torch.ops.saf_plugin.scan_e, scan_f

    return triton_kernels


def _step_kernels():
    from . import triton_step  # registers torch.ops.saf_plugin.step_e, step_f

    return triton_step


def available(y: Tensor, surrogate, mode: str) -> tuple[bool, str]:
    if y.dtype not in DTYPES:
        return False, f"the Triton kernels run fp32 state for fp32/fp16/bf16, not {y.dtype}"
    interpret = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")
    if not (y.is_cuda or interpret):
        return False, "the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1)"
    try:
        k = _kernels()
    except Exception as e:  # noqa: BLE001 - not installed, or no working driver
        return False, f"Triton cannot be used ({type(e).__name__}: {e})"
    if mode == Mode.E and k.surrogate_spec(surrogate) is None:
        return False, (f"surrogate {type(surrogate).__name__} has no Triton derivative "
                       "(SpikingJelly 2.0 surrogates with a float alpha have one)")
    return True, ""


def scan(y: Tensor, acc0: Optional[Tensor], *, lam: float, theta: float,
         scale: Optional[float], surrogate, mode: str, c: Optional[Tensor], grad: bool,
         spikes: bool):
    k = _kernels()
    if mode == Mode.E:
        sid, alpha = k.surrogate_spec(surrogate)
        acc, _, last = torch.ops.saf_plugin.scan_e(y, acc0, lam, theta, scale, sid, alpha, grad)
    else:
        c = c.to(device=y.device, dtype=torch.float32)
        acc, last, _ = torch.ops.saf_plugin.scan_f(y, acc0, lam, theta, scale, c)
    return acc, last.detach(), None  # the state: no graph


def step(y: Tensor, acc0: Optional[Tensor], *, lam: float, theta: float,
         scale: Optional[float], surrogate, mode: str, c: Optional[Tensor], grad: bool):
    k, ks = _kernels(), _step_kernels()
    if mode == Mode.F:
        if grad:
            return ks.StepF.apply(y, acc0, lam, theta, scale, c), None
        return torch.ops.saf_plugin.step_f(y, acc0, lam, theta, scale, c), None
    sid, alpha = k.surrogate_spec(surrogate)
    if grad:
        acc, spk = ks.StepE.apply(y, acc0, lam, theta, scale, sid, alpha)
    else:
        acc, spk, _ = torch.ops.saf_plugin.step_e(y, acc0, lam, theta, scale, sid, alpha, False)
    return acc, spk if acc0 is not None else acc
