"""Hand-written references shared by the gradient tests (never saf_plugin's code).

``TraceLinear``: a linear layer whose weight gradient is taken through the presynaptic trace
â[t] = λ â[t−1] + s[t] (OTTT's rule). ``Spike``: a Heaviside spike that keeps its input's dtype
(snnTorch's own surrogates emit float32 spikes, which a float64 model cannot take), with a
fast-sigmoid derivative in backward. ``MatMul``: x @ wᵀ through a custom autograd function (a
linear map SAF cannot see into).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class TraceLinear(torch.autograd.Function):
    """y = W s + b; backward: ∂/∂s = W (as usual), ∂/∂W = δ âᵀ with the trace â (OTTT)."""

    @staticmethod
    def forward(ctx, s, trace, weight, bias):
        ctx.save_for_backward(trace, weight)
        return F.linear(s, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        trace, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        return (grad @ weight, None, g.T @ trace.reshape(-1, trace.shape[-1]), g.sum(0))


class Spike(torch.autograd.Function):
    """H(x) = [x > 0] in x's dtype; backward 1 / (1 + 5|x|)²."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / (1 + 5 * x.abs()) ** 2


def spike_grad(x):
    return Spike.apply(x)


class MatMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.T

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad @ w, grad.T @ x
