"""The SAF neuron as the adapters run it: one step, a multi-step scan, entry and exit.

Library adapters only say how to read a neuron's parameters (:class:`NeuronParams`) and where
its SAF state lives; the maths is :mod:`saf_plugin.core`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from . import core


@dataclass
class NeuronParams:
    """decay λ (a float), its learnable form (a tensor with grad, or None), threshold θ, the
    input scale (1 − λ with SpikingJelly's ``decay_input``, else 1), the surrogate, and the
    scan backend of :mod:`saf_plugin.kernels` for step mode 'm'."""

    decay: float
    decay_param: Optional[Tensor]
    theta: float
    input_scale: Optional[float]
    surrogate: Callable[[Tensor], Tensor]
    backend: str = "auto"

    @property
    def decay_input(self) -> bool:
        return self.input_scale is not None


@dataclass
class NeuronState:
    """â[t−1]; and for re-accumulation / a learnable decay, the last input z[t−1] and Y[t−1]."""

    acc: Optional[Tensor] = None
    z_prev: Optional[Tensor] = None
    y_prev: Optional[Tensor] = None


def step(ctx, x: Tensor, st: NeuronState, p: NeuronParams, c: Optional[Tensor]) -> Tensor:
    """One SAF step on this layer's input ``x`` (the sender's accumulation mapped by the layers
    in between); updates ``st`` in place and returns â[t] (with graph)."""
    y = x
    if p.decay_param is not None or ctx.decay != p.decay:
        y = core.reaccumulate_step(x, st.z_prev, st.y_prev, ctx.decay, p.decay)
        st.z_prev = x.detach()
    scaled = y * p.input_scale if p.decay_input else y
    if p.decay_param is not None:
        term = core.decay_gradient_term(y, st.y_prev, st.acc, p.theta, p.decay_input)
        scaled = scaled + (p.decay_param - p.decay) * term
        st.y_prev = y.detach()
    elif st.z_prev is not None:
        st.y_prev = y.detach()
    if ctx.mode == "F":
        acc, _ = core.saf_f_step(scaled, st.acc, p.decay, p.theta, c)
    else:
        acc, _ = core.saf_e_step(scaled, st.acc, p.decay, p.theta, p.surrogate)
    st.acc = acc.detach()
    return acc


def forward(module, ctx, x: Tensor, st: NeuronState, p: NeuronParams) -> Tensor:
    """A SAF neuron's forward in the context's step mode: x is [B, ...] or [T, B, ...].

    Returns â (to the next layer), or at the model's exit the per-step spikes (SAF-E) or the
    spike representation â/c (SAF-F).
    """
    x = ctx.arrive(module, x)
    c = ctx.series(p.decay, like=x) if ctx.mode == "F" else None
    if ctx.step_mode == "s":
        out = step(ctx, x, st, p, None if c is None else c[0])
    elif p.decay_param is None and ctx.decay == p.decay and st.z_prev is None:
        from . import kernels  # the 'm' scan: one dispatcher, core is its oracle

        out, st.acc = kernels.scan(x, st.acc, lam=p.decay, theta=p.theta,
                                   input_scale=p.input_scale, surrogate=p.surrogate,
                                   mode=ctx.mode, c_last=None if c is None else c[-1],
                                   backend=p.backend)
    else:
        steps = []
        last = x.shape[0] - 1
        for t in range(x.shape[0]):
            grad = torch.is_grad_enabled() and (ctx.mode == "E" or t == last)
            with torch.set_grad_enabled(grad):
                steps.append(step(ctx, x[t], st, p, None if c is None else c[t]))
        out = torch.stack(steps)
    ctx.decay = p.decay
    return ctx.leave(out) if module is ctx.exit else out  # the exit: spikes, or â/c in SAF-F
