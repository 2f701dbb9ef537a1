"""The Triton kernel and ops of backend ``"triton"``'s step (:func:`saf_plugin.kernels.step`,
fp32), beside the scan's in :mod:`.triton_kernels`, whose two backward kernels they reuse.

- Forward (:func:`_step_kernel`): one step of the scan's arithmetic over N neurons, in memory
  order (the results take y's layout where y is dense, as PyTorch's element-wise operations
  give), writing â[t], s[t] (with a carried state, SAF-E) and z[t] (SAF-E with gradient);
  SAF-F adds the Spike Representation's zero (r − r), as :func:`saf_plugin.core.saf_f_step`
  does. Compiled with ``enable_fp_fusion=False``: bit-identical to the PyTorch step.
- SAF-E backward: ``_e_backward_kernel`` with both gradients, ∂L/∂â[t] + ∂L/∂s[t]; SAF-F
  backward: ``_f_backward_kernel`` on the one step.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .torch_scan import CLAMP_GRAD_AT_ZERO
from .triton_kernels import (BLOCK, EXACT, NUM_WARPS, _e_backward_kernel, _f_backward_kernel,
                             _grid, _on)


@triton.jit
def _step_kernel(y_ptr, acc0_ptr, acc_ptr, spk_ptr, z_ptr, c_ptr, N, lam, theta_lam, theta,
                 scale, HAS_ACC0: tl.constexpr, HAS_SCALE: tl.constexpr, SAF_F: tl.constexpr,
                 SAVE_Z: tl.constexpr, BLOCK: tl.constexpr):
    lam = tl.cast(lam, tl.float32)
    theta_lam = tl.cast(theta_lam, tl.float32)
    theta = tl.cast(theta, tl.float32)
    scale = tl.cast(scale, tl.float32)
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < N
    y = tl.load(y_ptr + n, mask=mask, other=0.0)
    if HAS_SCALE:
        y = y * scale
    u = y
    prev = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_ACC0:
        prev = tl.load(acc0_ptr + n, mask=mask, other=0.0)
        u = u - theta_lam * prev
    z = u - theta
    s = tl.where(z >= 0.0, 1.0, 0.0)
    a = s
    if HAS_ACC0:
        a = lam * prev + s
    if SAF_F:  # + (r − r), r = min(max(y, 0)/θ, c): NaN stays NaN, as in PyTorch
        c = tl.load(c_ptr)
        r = tl.div_rn(tl.where(y < 0.0, 0.0, y), theta)
        r = tl.where(r > c, c, r)
        a = a + (r - r)
    tl.store(acc_ptr + n, a, mask=mask)
    if HAS_ACC0 and not SAF_F:
        tl.store(spk_ptr + n, s, mask=mask)
    if SAVE_Z:
        tl.store(z_ptr + n, z, mask=mask)



def _like(t: Tensor, out: Tensor) -> Tensor:
    """``t`` in ``out``'s dtype and memory layout (the kernels walk memory order)."""
    t = t.to(out.dtype)
    return t if t.stride() == out.stride() else torch.empty_like(out).copy_(t)


def _step(y: Tensor, acc0: Optional[Tensor], lam: float, theta: float, scale: Optional[float],
          c: Optional[Tensor], save_z: bool) -> tuple[Tensor, Tensor, Tensor]:
    acc = torch.empty_like(y)  # y's layout where y is dense, as PyTorch's element-wise ops give
    y = _like(y, acc)
    has_acc0 = acc0 is not None
    a0 = _like(acc0, acc) if has_acc0 else acc
    spk = torch.empty_like(acc) if has_acc0 and c is None else acc.new_empty(0)
    z = torch.empty_like(acc) if save_z else acc.new_empty(0)
    cc = c.to(torch.float32).reshape(1) if c is not None else acc
    with _on(y):
        _step_kernel[_grid(y.numel())](
            y, a0, acc, spk if spk.numel() else acc, z if save_z else acc, cc, y.numel(),
            float(lam), float(theta * lam), float(theta), 1.0 if scale is None else float(scale),
            HAS_ACC0=has_acc0, HAS_SCALE=scale is not None, SAF_F=c is not None, SAVE_Z=save_z,
            BLOCK=BLOCK, num_warps=NUM_WARPS, **EXACT)
    return acc, spk, z


@torch.library.custom_op("saf_plugin::step_e", mutates_args=())
def step_e(y: Tensor, acc0: Optional[Tensor], lam: float, theta: float, scale: Optional[float],
           surrogate_id: int, alpha: float, save_z: bool) -> tuple[Tensor, Tensor, Tensor]:
    """One SAF-E step of fp32 ``y``: (â[t], s[t] or [0] without ``acc0``, z[t] or [0])."""
    return _step(y, acc0, lam, theta, scale, None, save_z)


@step_e.register_fake
def _(y, acc0, lam, theta, scale, surrogate_id, alpha, save_z):
    return (torch.empty_like(y), torch.empty_like(y) if acc0 is not None else y.new_empty(0),
            torch.empty_like(y) if save_z else y.new_empty(0))


@torch.library.custom_op("saf_plugin::step_e_backward", mutates_args=())
def step_e_backward(z: Tensor, grad_acc: Optional[Tensor], grad_spk: Optional[Tensor],
                    scale: Optional[float], surrogate_id: int, alpha: float) -> Tensor:
    """∂L/∂Y = σ'(z) (∂L/∂â + ∂L/∂s) ρ for one step (either gradient may be None)."""
    g, g2 = (grad_acc, grad_spk) if grad_acc is not None else (grad_spk, None)
    g = _like(g, z)
    g2 = _like(g2, z) if g2 is not None else g
    dy = torch.empty_like(z)
    with _on(z):
        _e_backward_kernel[_grid(z.numel())](
            g, g2, z, dy, z.numel(), float(alpha), 1.0 if scale is None else float(scale),
            SURROGATE=surrogate_id, HAS_G2=grad_acc is not None and grad_spk is not None,
            HAS_SCALE=scale is not None, KIND=0, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return dy


@step_e_backward.register_fake
def _(z, grad_acc, grad_spk, scale, surrogate_id, alpha):
    return torch.empty_like(z)




@torch.library.custom_op("saf_plugin::step_f", mutates_args=())
def step_f(y: Tensor, acc0: Optional[Tensor], lam: float, theta: float, scale: Optional[float],
           c: Tensor) -> Tensor:
    """One SAF-F step of fp32 ``y`` with the series value ``c`` = c[t] (0-d): â[t]."""
    return _step(y, acc0, lam, theta, scale, c, False)[0]


@step_f.register_fake
def _(y, acc0, lam, theta, scale, c):
    return torch.empty_like(y)


@torch.library.custom_op("saf_plugin::step_f_backward", mutates_args=())
def step_f_backward(grad: Tensor, y: Tensor, c: Tensor, theta: float,
                    scale: Optional[float]) -> Tensor:
    """∂L/∂Y of one SAF-F step: the Spike Representation's gradient."""
    dy = torch.empty_like(y)
    y = _like(y, dy)
    g = _like(grad, dy)
    with _on(dy):
        _f_backward_kernel[_grid(y.numel())](
            g, y, c.to(torch.float32).reshape(1), dy, y.numel(), float(theta),
            1.0 if scale is None else float(scale), HAS_SCALE=scale is not None,
            GRAD_AT_ZERO=CLAMP_GRAD_AT_ZERO, KIND=0, BLOCK=BLOCK, num_warps=NUM_WARPS, **EXACT)
    return dy


@step_f_backward.register_fake
def _(grad, y, c, theta, scale):
    return torch.empty_like(y)


# The step's autograd: torch.autograd.Functions around the ops (torch.library's registered
# autograd spends tens of microseconds per call in Python filling in default arguments, as much
# as a step's kernel launches; torch.compile traces these Functions and the ops' fakes).


class StepE(torch.autograd.Function):
    """(â[t], s[t]) = step_e(Y[t]); s[t] is None without ``acc0`` (it is â[t] then)."""

    @staticmethod
    def forward(ctx, y, acc0, lam, theta, scale, sid, alpha):
        acc, spk, z = torch.ops.saf_plugin.step_e(y, acc0, lam, theta, scale, sid, alpha, True)
        ctx.save_for_backward(z)
        ctx.meta = (scale, sid, alpha)
        ctx.set_materialize_grads(False)
        return acc, spk if acc0 is not None else None

    @staticmethod
    def backward(ctx, g_acc, g_spk):
        (z,) = ctx.saved_tensors
        if g_acc is None and g_spk is None:
            return (None,) * 7
        dy = torch.ops.saf_plugin.step_e_backward(z, g_acc, g_spk, *ctx.meta)
        return dy, None, None, None, None, None, None


class StepF(torch.autograd.Function):
    """â[t] = step_f(Y[t]) with the Spike Representation's gradient."""

    @staticmethod
    def forward(ctx, y, acc0, lam, theta, scale, c):
        ctx.save_for_backward(y, c)
        ctx.meta = (theta, scale)
        return torch.ops.saf_plugin.step_f(y, acc0, lam, theta, scale, c)

    @staticmethod
    def backward(ctx, grad):
        y, c = ctx.saved_tensors
        dy = torch.ops.saf_plugin.step_f_backward(grad, y, c, *ctx.meta)
        return dy, None, None, None, None, None
