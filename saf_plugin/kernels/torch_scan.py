"""Backend ``"torch"``: the SAF scan and step in plain PyTorch, everywhere.

The step is the oracle itself (:func:`saf_plugin.core.lif_spike` and
:func:`~saf_plugin.core.accumulate_step`; :func:`~saf_plugin.core.saf_f_step` for SAF-F). The
scan is a custom autograd Function whose forward is bit-identical to the oracle applied step by
step and whose backward agrees with it to rounding, saving one tensor z[t] = u[t] − θ per step
instead of a graph per step.

Forward, per step (â[−1] = 0, â[t−1] a constant):

    u[t] = ρ Y[t] − θ λ â[t−1],   s[t] = H(u[t] − θ),   â[t] = λ â[t−1] + s[t]

(ρ = 1 − λ with ``decay_input``, else 1). SAF-E backward is elementwise:
∂L/∂Y[t] = ρ · σ'(z[t]) · ∂L/∂â[t], with σ' the surrogate's own backward.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .. import core
from ..modes import Mode

Surrogate = Callable[[Tensor], Tensor]


def state_dtype(y: Tensor) -> torch.dtype:
    """The dtype a scan runs its state in: fp64 for fp64 input, else fp32."""
    return torch.float64 if y.dtype == torch.float64 else torch.float32


def available(y: Tensor, surrogate, mode: str) -> tuple[bool, str]:
    return True, ""


def scan(y: Tensor, acc0: Optional[Tensor], *, lam: float, theta: float,
         scale: Optional[float], surrogate, mode: str, c: Optional[Tensor], grad: bool,
         spikes: bool):
    if mode == Mode.F:
        return f_by_steps(y, acc0, lam=lam, theta=theta, scale=scale, c=c, grad=grad,
                          forward=_forward, step=step)
    sd = state_dtype(y)
    if grad:
        acc = TorchScan.apply(y, acc0, lam, theta, scale, surrogate, sd)
    else:
        acc, _ = forward_scan(y.detach().to(sd), acc0, lam, theta, scale, _fire(surrogate),
                              save_z=False)
    return acc.to(y.dtype), acc[-1].detach(), None


def step(y: Tensor, acc0: Optional[Tensor], *, lam: float, theta: float,
         scale: Optional[float], surrogate, mode: str, c: Optional[Tensor], grad: bool):
    y = y * scale if scale is not None else y
    if mode == Mode.F:
        return core.saf_f_step(y, acc0, lam, theta, c)[0], None
    s, _ = core.lif_spike(y, acc0, lam, theta, surrogate)
    s = s.to(y.dtype)  # (a surrogate may return float32: â keeps y's dtype)
    return core.accumulate_step(s, acc0, lam), s


def f_by_steps(y: Tensor, acc0: Optional[Tensor], *, lam: float, theta: float,
               scale: Optional[float], c: Tensor, grad: bool, forward, step):
    """The SAF-F scan of ``y`` [T, ...] from a backend's graph-free ``forward(y, acc0, lam, θ,
    ρ)`` for steps 0..T−2 and its SAF-F ``step`` for the last; returns what ``scan`` returns."""
    sd = state_dtype(y)
    T = y.shape[0]
    head, prev = None, acc0
    if T > 1:
        with torch.no_grad():
            head = forward(y[:-1].detach().to(sd), acc0, lam, theta, scale)
        prev = head[-1]
    last = y[-1].to(sd, copy=True)  # a copy: the graph must not keep [T, ...] alive
    with torch.set_grad_enabled(grad):
        acc_last, _ = step(last, prev, lam=lam, theta=theta, scale=scale, surrogate=None,
                           mode=Mode.F, c=c.to(sd), grad=grad)
    acc = acc_last.unsqueeze(0) if head is None else torch.cat([head, acc_last.unsqueeze(0)])
    return acc.to(y.dtype), acc_last.detach(), None


def _clamp_grad_at_zero() -> bool:
    """Asked of autograd once, at import, which may happen inside a model's first forward:
    outside any inference mode, no-grad block or user mode."""
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes(), torch._C.DisableTorchFunction(), \
            torch.inference_mode(False), torch.enable_grad():
        x = torch.zeros((), requires_grad=True)
        (g,) = torch.autograd.grad(torch.clamp(x, min=0.0), x)
        return bool(g == 1)


# Whether this torch gives clamp(x, min=0) the gradient 1 at x = 0, as releases before its
# minimum-norm subgradient rule did (newer ones give 0). SAF-F's gradient at ρY = 0 is that of
# the Spike Representation's clamp (core.spike_representation): the fused backwards follow it.
CLAMP_GRAD_AT_ZERO = _clamp_grad_at_zero()


def _forward(y: Tensor, acc0: Optional[Tensor], lam: float, theta: float,
             scale: Optional[float]) -> Tensor:
    return forward_scan(y, acc0, lam, theta, scale, core.heaviside, save_z=False)[0]


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
