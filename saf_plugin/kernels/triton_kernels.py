"""The Triton kernels of backend ``"triton"`` (:mod:`.triton_scan`), registered with torch.library.

Tensors are viewed as [T, N] (N = B·…); one program owns BLOCK neurons and loops over t with
the state â in fp32 registers (docs/theory.md, "Spike accumulation and the SAF forward"):

    u[t] = ρ Y[t] − (θλ) â[t−1],   z[t] = u[t] − θ,   s[t] = H(z[t]),   â[t] = λ â[t−1] + s[t]

with â[−1] = the carried state (0 when none) and ρ = ``scale`` (1 − λ with ``decay_input``).

- Scan forward (:func:`_forward_kernel`): reads Y (input dtype), writes â (input dtype), the
  last state â[T−1] (fp32) and, only when SAF-E needs a gradient, z (fp32): 8 B/element in
  fp32 without gradient, 12 B with. Every product and sum is rounded on its own (the kernel is
  compiled with ``enable_fp_fusion=False``), in the order of
  :func:`saf_plugin.kernels.torch_scan.forward_scan`, so â is bit-identical to the PyTorch scan.
- The one-step kernel and ops are in :mod:`.triton_step`; they reuse the two backward kernels
  below.
- SAF-E backward (:func:`_e_backward_kernel`), element-wise since â[t−1] is a constant:
  ∂L/∂Y[t] = σ'(z[t]) · (∂L/∂â[t] + ∂L/∂s[t]) · ρ, with σ' SpikingJelly 2.0's Triton surrogate
  derivative.
- SAF-F backward (:func:`_f_backward_kernel`), last step only: with y = ρ Y[T−1],
  r = max(y, 0)/θ and the series c = c[T−1], â[T−1] carries r − r.detach() (the Spike
  Representation, :func:`saf_plugin.core.saf_f_step`), so
  ∂L/∂Y[T−1] = ρ · [y > 0] · m / θ,  m = g if r < c, g/2 if r = c, 0 otherwise
  (PyTorch's clamp/minimum/div rules; [y ≥ 0] where this torch's clamp gives the gradient 1 at
  its bound, ``torch_scan.CLAMP_GRAD_AT_ZERO``); ∂L/∂Y[t] = 0 for t < T−1.

bf16 results are rounded to nearest even explicitly (bit arithmetic): compiled Triton rounds
that way, Triton's CPU interpreter truncates, and the explicit form is the same on both.

The ops are ``torch.library.custom_op`` with fake implementations and registered autograd,
so torch.compile keeps them in one graph without looking inside. (A ``triton_op`` would let
Inductor recompile the kernels with its own options, which may contract multiply-adds.)
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .torch_scan import CLAMP_GRAD_AT_ZERO

try:  # SpikingJelly 2.0's @triton.jit surrogate derivative σ'(x; α, id)
    from spikingjelly._ops.triton_surrogate import _surrogate_gradient as _sg
except ImportError:  # SpikingJelly 0.0.0.0.14: SAF-F only (it needs no surrogate)
    _sg = None

BLOCK = 256  # neurons per program
NUM_WARPS = 4
EXACT = {"enable_fp_fusion": False}  # launch options where rounding must match the PyTorch scan
_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def surrogate_spec(surrogate) -> Optional[tuple[int, float]]:
    """(id, α) of a SpikingJelly 2.0 surrogate with a Triton derivative, else None."""
    try:
        from spikingjelly._ops.surrogate import _surrogate_spec
    except ImportError:
        return None
    if surrogate is None or _sg is None:
        return None
    return _surrogate_spec(surrogate)


@triton.jit
def _store(ptr, x, mask, KIND: tl.constexpr):
    """Store fp32 ``x`` as fp32 (0), fp16 (1) or bf16 (2), rounding to nearest even."""
    if KIND == 0:
        tl.store(ptr, x, mask=mask)
    elif KIND == 1:
        tl.store(ptr, x.to(tl.float16), mask=mask)
    else:
        bits = x.to(tl.uint32, bitcast=True)
        bits = tl.where(x == x, (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16, 0x7FC0)  # NaN: NaN
        tl.store(ptr, bits.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)


@triton.jit
def _forward_kernel(y_ptr, acc0_ptr, acc_ptr, z_ptr, last_ptr, T, N, lam, theta_lam, theta,
                    scale, HAS_ACC0: tl.constexpr, HAS_SCALE: tl.constexpr,
                    SAVE_Z: tl.constexpr, KIND: tl.constexpr, BLOCK: tl.constexpr):
    lam = tl.cast(lam, tl.float32)
    theta_lam = tl.cast(theta_lam, tl.float32)
    theta = tl.cast(theta, tl.float32)
    scale = tl.cast(scale, tl.float32)
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < N
    if HAS_ACC0:
        prev = tl.load(acc0_ptr + n, mask=mask, other=0.0)
    else:
        prev = tl.zeros([BLOCK], dtype=tl.float32)
    off = n
    for _ in range(T):
        u = tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if HAS_SCALE:
            u = u * scale
        u = u - theta_lam * prev  # prev = 0 at t = 0 without state: u stays exactly ρY
        z = u - theta
        prev = lam * prev + tl.where(z >= 0.0, 1.0, 0.0)
        _store(acc_ptr + off, prev, mask, KIND)
        if SAVE_Z:
            tl.store(z_ptr + off, z, mask=mask)
        off += N
    tl.store(last_ptr + n, prev, mask=mask)


@triton.jit
def _e_backward_kernel(g_ptr, g2_ptr, z_ptr, dy_ptr, numel, alpha, scale, SURROGATE: tl.constexpr,
                       HAS_G2: tl.constexpr, HAS_SCALE: tl.constexpr, KIND: tl.constexpr,
                       BLOCK: tl.constexpr):
    alpha = tl.cast(alpha, tl.float32)
    scale = tl.cast(scale, tl.float32)
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < numel
    g = tl.load(g_ptr + i, mask=mask, other=0.0).to(tl.float32)
    if HAS_G2:  # the step's ∂L/∂â[t] + ∂L/∂s[t]
        g = g + tl.load(g2_ptr + i, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + i, mask=mask, other=0.0)
    d = g * _sg(z, alpha, SURROGATE)
    if HAS_SCALE:
        d = d * scale
    _store(dy_ptr + i, d, mask, KIND)


@triton.jit
def _f_backward_kernel(g_ptr, y_ptr, c_ptr, dy_ptr, N, theta, scale, HAS_SCALE: tl.constexpr,
                       GRAD_AT_ZERO: tl.constexpr, KIND: tl.constexpr, BLOCK: tl.constexpr):
    theta = tl.cast(theta, tl.float32)
    scale = tl.cast(scale, tl.float32)
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < N
    y = tl.load(y_ptr + n, mask=mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        y = y * scale
    g = tl.load(g_ptr + n, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(c_ptr)
    r = tl.div_rn(tl.maximum(y, 0.0), theta)
    m = tl.where(r < c, g, tl.where(r == c, g * 0.5, 0.0))
    if GRAD_AT_ZERO:
        d = tl.where(y >= 0.0, tl.div_rn(m, theta), 0.0)
    else:
        d = tl.where(y > 0.0, tl.div_rn(m, theta), 0.0)
    if HAS_SCALE:
        d = d * scale
    _store(dy_ptr + n, d, mask, KIND)


def _grid(n: int):
    return (triton.cdiv(max(n, 1), BLOCK),)


def _on(t: Tensor):
    """Launch on ``t``'s GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _forward(y: Tensor, acc0: Optional[Tensor], lam: float, theta: float,
             scale: Optional[float], save_z: bool) -> tuple[Tensor, Tensor, Tensor]:
    T = y.shape[0]
    y2 = y.reshape(T, -1).contiguous()
    N = y2.shape[1]
    acc = torch.empty_like(y2)
    z = torch.empty((T, N) if save_z else (0,), device=y.device, dtype=torch.float32)
    last = torch.empty(N, device=y.device, dtype=torch.float32)
    a0 = None if acc0 is None else acc0.reshape(-1).to(torch.float32).contiguous()
    with _on(y):
        _forward_kernel[_grid(N)](
            y2, a0 if a0 is not None else last, acc, z if save_z else last, last, T, N,
            float(lam), float(theta * lam), float(theta), 1.0 if scale is None else float(scale),
            HAS_ACC0=a0 is not None, HAS_SCALE=scale is not None, SAVE_Z=save_z,
            KIND=_KIND[y.dtype], BLOCK=BLOCK, num_warps=NUM_WARPS, **EXACT)
    return acc.view(y.shape), z.view(y.shape) if save_z else z, last.view(y.shape[1:])


# ----------------------------------------------------------------------------- ops


@torch.library.custom_op("saf_plugin::scan_e", mutates_args=())
def scan_e(y: Tensor, acc0: Optional[Tensor], lam: float, theta: float, scale: Optional[float],
           surrogate_id: int, alpha: float, save_z: bool) -> tuple[Tensor, Tensor, Tensor]:
    """SAF-E scan of ``y`` [T, ...]: (â [T, ...] in y's dtype, z [T, ...] fp32 or [0], â[T−1] fp32)."""
    return _forward(y, acc0, lam, theta, scale, save_z)


@scan_e.register_fake
def _(y, acc0, lam, theta, scale, surrogate_id, alpha, save_z):
    z = y.new_empty(y.shape if save_z else (0,), dtype=torch.float32)
    return torch.empty_like(y), z, y.new_empty(y.shape[1:], dtype=torch.float32)


@torch.library.custom_op("saf_plugin::scan_e_backward", mutates_args=())
def scan_e_backward(grad: Tensor, z: Tensor, scale: Optional[float], surrogate_id: int,
                    alpha: float, dtype: torch.dtype) -> Tensor:
    """∂L/∂Y = σ'(z) ∂L/∂â ρ, element-wise over [T, ...], in ``dtype``."""
    g = grad.contiguous()
    dy = torch.empty(z.shape, device=z.device, dtype=dtype)
    with _on(z):
        _e_backward_kernel[_grid(z.numel())](
            g, g, z, dy, z.numel(), float(alpha), 1.0 if scale is None else float(scale),
            SURROGATE=surrogate_id, HAS_G2=False, HAS_SCALE=scale is not None, KIND=_KIND[dtype],
            BLOCK=BLOCK, num_warps=NUM_WARPS)
    return dy


@scan_e_backward.register_fake
def _(grad, z, scale, surrogate_id, alpha, dtype):
    return torch.empty(z.shape, device=z.device, dtype=dtype)


def _e_setup(ctx, inputs, output):
    y, _, _, _, scale, sid, alpha, _ = inputs
    ctx.save_for_backward(output[1])
    ctx.meta = (scale, sid, alpha, y.dtype)


def _e_backward(ctx, g_acc, g_z, g_last):
    (z,) = ctx.saved_tensors
    scale, sid, alpha, dtype = ctx.meta
    dy = torch.ops.saf_plugin.scan_e_backward(g_acc, z, scale, sid, alpha, dtype)
    return dy, None, None, None, None, None, None, None


scan_e.register_autograd(_e_backward, setup_context=_e_setup)


@torch.library.custom_op("saf_plugin::scan_f", mutates_args=())
def scan_f(y: Tensor, acc0: Optional[Tensor], lam: float, theta: float, scale: Optional[float],
           c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SAF-F scan of ``y`` [T, ...]: (â [T, ...] in y's dtype, â[T−1] fp32, a copy of Y[T−1]
    for the backward: the graph keeps one step of Y, not T)."""
    acc, _, last = _forward(y, acc0, lam, theta, scale, False)
    return acc, last, y[-1].clone()


@scan_f.register_fake
def _(y, acc0, lam, theta, scale, c):
    return torch.empty_like(y), y.new_empty(y.shape[1:], dtype=torch.float32), y.new_empty(y.shape[1:])


@torch.library.custom_op("saf_plugin::scan_f_backward", mutates_args=())
def scan_f_backward(grad_last: Tensor, y_last: Tensor, c: Tensor, theta: float,
                    scale: Optional[float], steps: int) -> Tensor:
    """∂L/∂Y [steps, ...]: zero before the last step, the Spike Representation gradient at it."""
    g = grad_last.contiguous()
    dy = torch.zeros((steps, *y_last.shape), device=y_last.device, dtype=y_last.dtype)
    with _on(dy):
        _f_backward_kernel[_grid(y_last.numel())](
            g, y_last.contiguous(), c.to(torch.float32).reshape(1), dy[-1], y_last.numel(),
            float(theta), 1.0 if scale is None else float(scale), HAS_SCALE=scale is not None,
            GRAD_AT_ZERO=CLAMP_GRAD_AT_ZERO, KIND=_KIND[y_last.dtype], BLOCK=BLOCK,
            num_warps=NUM_WARPS, **EXACT)
    return dy


@scan_f_backward.register_fake
def _(grad_last, y_last, c, theta, scale, steps):
    return y_last.new_empty((steps, *y_last.shape))


def _f_setup(ctx, inputs, output):
    y, _, _, theta, scale, c = inputs
    ctx.save_for_backward(output[2], c)
    ctx.meta = (theta, scale, y.shape[0])


def _f_backward(ctx, g_acc, g_last, g_y):
    y_last, c = ctx.saved_tensors
    theta, scale, steps = ctx.meta
    dy = torch.ops.saf_plugin.scan_f_backward(g_acc[-1], y_last, c, theta, scale, steps)
    return dy, None, None, None, None, None


scan_f.register_autograd(_f_backward, setup_context=_f_setup)
