"""The SAF multi-step scan in plain PyTorch: a custom autograd Function whose forward is
bit-identical to :func:`saf_plugin.core.saf_e_step` applied step by step (the oracle) and whose
backward agrees with it to rounding, saving one tensor z[t] = u[t] − θ per step instead of a
graph per step.

Forward, per step (â[−1] = 0, â[t−1] a constant):

    u[t] = ρ Y[t] − θ λ â[t−1],   s[t] = H(u[t] − θ),   â[t] = λ â[t−1] + s[t]

(ρ = 1 − λ with ``decay_input``, else 1). SAF-E backward is elementwise:
∂L/∂Y[t] = ρ · σ'(z[t]) · ∂L/∂â[t], with σ' the surrogate's own backward.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

Surrogate = Callable[[Tensor], Tensor]


def forward_scan(y32: Tensor, acc0: Optional[Tensor], lam: float, theta: float,
                 scale: Optional[float], fire: Surrogate, save_z: bool):
    """Run the scan on ``y32`` [T, ...] (state dtype); returns (â [T, ...], z [T, ...] or None).

    ``fire`` gives s[t] from u[t] − θ (a surrogate's forward, or the Heaviside step)."""
    acc = torch.empty_like(y32)
    z = torch.empty_like(y32) if save_z else None
    prev = acc0
    tl = theta * lam
    with torch.no_grad():
        for t in range(y32.shape[0]):
            u = y32[t] * scale if scale is not None else y32[t]
            if prev is not None:
                u = u - tl * prev
            zt = u - theta
            s = fire(zt)
            if z is not None:
                z[t] = zt
            if prev is None:
                acc[t] = s
            else:
                torch.add(lam * prev, s, out=acc[t])
            prev = acc[t]
    return acc, z


def surrogate_grad(surrogate: Surrogate, z: Tensor, grad: Tensor) -> Tensor:
    """σ'(z) · grad through the surrogate's own autograd backward, in one call over [T, ...]
    (SAF-E's backward is elementwise: no step depends on another). CPU kernels vectorise by
    position, so this can differ from the oracle's per-step calls in the last bit."""
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        s = surrogate(zz)
        (out,) = torch.autograd.grad(s, zz, grad.to(s.dtype))
    return out


class TorchScan(torch.autograd.Function):
    """â = scan(Y) with the SAF-E gradient; ``acc0`` (â[t0−1]) is a constant."""

    @staticmethod
    def forward(ctx, y: Tensor, acc0: Optional[Tensor], lam: float, theta: float,
                scale: Optional[float], surrogate: Surrogate, state_dtype: torch.dtype):
        y32 = y.to(state_dtype)
        acc, z = forward_scan(y32, acc0, lam, theta, scale, _fire(surrogate),
                              save_z=ctx.needs_input_grad[0])
        if z is not None:
            ctx.save_for_backward(z)
        ctx.surrogate, ctx.scale, ctx.in_dtype = surrogate, scale, y.dtype
        return acc

    @staticmethod
    def backward(ctx, grad_acc: Tensor):
        (z,) = ctx.saved_tensors
        g = surrogate_grad(ctx.surrogate, z, grad_acc.to(z.dtype))
        if ctx.scale is not None:
            g = g * ctx.scale
        return g.to(ctx.in_dtype), None, None, None, None, None, None


def _fire(surrogate: Surrogate) -> Surrogate:
    def fire(z: Tensor) -> Tensor:
        return surrogate(z).to(z.dtype)
    return fire
