"""Backend ``"cupy"``: the SAF scan as CUDA C kernels launched with CuPy, for SpikingJelly
0.0.0.0.14, whose surrogates carry their derivative as CUDA code (``cuda_codes``). There is no
step kernel: :func:`step` is the PyTorch step (0.0.0.0.14 runs its own ``'cupy'`` neurons in
step mode 'm' only).

Tensors are viewed as [T, N]; one thread owns one neuron n and loops over t (64-bit indices),
with the state â in a register (docs/theory.md, "Spike accumulation and the SAF forward"):

    u = ρ Y[t] − (θλ) â,   z[t] = u − θ,   â ← λ â + H(z[t]),   â[t] = â

Forward reads Y and writes â (8 B/element, fp32), plus z (4 B) only when SAF-E needs a
gradient. Every product and sum uses the ``__f*_rn`` intrinsics, which the compiler never
contracts into FMAs: â rounds exactly like the PyTorch scan. SAF-E backward is element-wise:
∂L/∂Y[t] = σ'(z[t]) ∂L/∂â[t] ρ, with σ' the surrogate's ``cuda_codes`` (its rounding differs
from the PyTorch surrogate in the last bits).

Sources are plain strings (:func:`forward_source`, :func:`backward_source`), so they can be
compiled and read without a GPU; kernel names carry a SHA-1 of the source, so CuPy's on-disk
cache finds them again in the next process. Launches go to PyTorch's current CUDA stream.
Scalars are passed by value as NumPy scalars of fixed width (float32, int64).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import sys
from typing import Optional

import torch
from torch import Tensor

from ..modes import Mode
from . import torch_scan

THREADS = 256
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
OPTIONS: tuple[str, ...] = ("--std=c++11",)  # no fast math: expf stays exact, no flush to zero

_FORWARD = r"""
extern "C" __global__ void NAME(const float* __restrict__ y, const float* __restrict__ acc0,
    float* __restrict__ acc, float* __restrict__ z, const long long T, const long long N,
    const float lam, const float theta_lam, const float theta, const float scale)
{
    const long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float prev = ACC0;
    for (long long i = n; i < T * N; i += N) {
        const float u = __fsub_rn(INPUT, __fmul_rn(theta_lam, prev));
        const float zz = __fsub_rn(u, theta);
        prev = __fadd_rn(__fmul_rn(lam, prev), zz >= 0.0f ? 1.0f : 0.0f);
        acc[i] = prev;
        SAVE_Z
    }
}
"""

_BACKWARD = r"""
extern "C" __global__ void NAME(const float* __restrict__ g, const float* __restrict__ z,
    float* __restrict__ dy, const long long numel, const float scale)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= numel) return;
    const float x = z[i];
    SURROGATE
    dy[i] = OUTPUT;
}
"""


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


def available(y: Tensor, surrogate, mode: str) -> tuple[bool, str]:
    if not y.is_cuda:
        return False, "the CuPy kernels need CUDA tensors"
    if y.dtype not in DTYPES:
        return False, f"the CuPy kernels run fp32 state for fp32/fp16/bf16, not {y.dtype}"
    if not spikingjelly_is_legacy():
        return False, "the CuPy kernels need SpikingJelly 0.0.0.0.14 (auto_cuda)"
    if importlib.util.find_spec("cupy") is None:
        return False, "CuPy is not installed"
    if mode == Mode.E and surrogate_codes(surrogate) is None:
        return False, (f"surrogate {type(surrogate).__name__} has no CUDA code "
                       "(SpikingJelly 0.0.0.0.14 cuda_codes)")
    return True, ""


def scan(y: Tensor, acc0: Optional[Tensor], *, lam: float, theta: float,
         scale: Optional[float], surrogate, mode: str, c: Optional[Tensor], grad: bool,
         spikes: bool):
    if mode == Mode.F:
        return torch_scan.f_by_steps(y, acc0, lam=lam, theta=theta, scale=scale, c=c, grad=grad,
                                     forward=_forward, step=step)
    acc = CupyScan.apply(y, acc0, lam, theta, scale, surrogate)
    return acc.to(y.dtype), acc[-1].detach(), None


def _forward(y: Tensor, acc0: Optional[Tensor], lam: float, theta: float,
             scale: Optional[float]) -> Tensor:
    return CupyScan.apply(y, acc0, lam, theta, scale, None)


step = torch_scan.step


@functools.lru_cache(maxsize=None)
def _named(src: str, prefix: str) -> tuple[str, str]:
    name = f"{prefix}_{hashlib.sha1(src.encode()).hexdigest()[:16]}"
    return src.replace("NAME", name), name


@functools.lru_cache(maxsize=None)
def forward_source(decay_input: bool, has_acc0: bool, save_z: bool) -> tuple[str, str]:
    """(CUDA source, kernel name) of the forward scan variant."""
    src = (_FORWARD.replace("ACC0", "acc0[n]" if has_acc0 else "0.0f")
           .replace("INPUT", "__fmul_rn(y[i], scale)" if decay_input else "y[i]")
           .replace("SAVE_Z", "z[i] = zz;" if save_z else ""))
    return _named(src, "saf_scan_forward")


def backward_source(surrogate, decay_input: bool) -> tuple[str, str]:
    """(CUDA source, kernel name) of SAF-E's backward with ``surrogate``'s CUDA derivative."""
    code = surrogate.cuda_codes(y="const float sg", x="x", dtype="float")
    src = (_BACKWARD.replace("SURROGATE", code)
           .replace("OUTPUT", "__fmul_rn(__fmul_rn(g[i], sg), scale)" if decay_input
                    else "__fmul_rn(g[i], sg)"))
    return _named(src, "saf_scan_backward")


def surrogate_codes(surrogate) -> Optional[object]:
    """The surrogate's ``cuda_codes`` if it has working CUDA code (0.0.0.0.14 surrogates), else None."""
    codes = getattr(surrogate, "cuda_codes", None)
    if codes is None:
        return None
    try:
        codes(y="y", x="x", dtype="float")
    except (NotImplementedError, TypeError, AttributeError):
        return None
    return codes


_KERNELS: dict[str, object] = {}


def _launch(source: tuple[str, str], device: torch.device, n: int, *args) -> None:
    """Run kernel ``source`` over n threads on PyTorch's current stream of ``device``."""
    import cupy

    src, name = source
    kernel = _KERNELS.get(name)
    if kernel is None:
        kernel = _KERNELS[name] = cupy.RawKernel(src, name, options=OPTIONS)
    if n >= 2**31 * THREADS:
        raise ValueError(f"the CuPy SAF scan handles at most {2**31 * THREADS} neurons, not {n}")
    if n == 0:
        return
    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index):
        kernel(((n + THREADS - 1) // THREADS,), (THREADS,), args,
               stream=cupy.cuda.ExternalStream(stream.cuda_stream))


def _ptr(t: Optional[Tensor]):
    import numpy as np

    return np.uint64(0 if t is None else t.data_ptr())


class CupyScan(torch.autograd.Function):
    """â = scan(Y) by the CUDA kernels; ``y`` [T, ...] any float dtype, fp32 state and result."""

    @staticmethod
    def forward(ctx, y: Tensor, acc0: Optional[Tensor], lam: float, theta: float,
                scale: Optional[float], surrogate):
        import numpy as np

        T = y.shape[0]
        x = y.detach().to(torch.float32).reshape(T, -1).contiguous()
        N = x.shape[1]
        a0 = None if acc0 is None else acc0.detach().to(torch.float32).reshape(-1).contiguous()
        acc = torch.empty_like(x)
        save_z = ctx.needs_input_grad[0]
        z = torch.empty_like(x) if save_z else None
        f32 = np.float32
        _launch(forward_source(scale is not None, a0 is not None, save_z), x.device, N,
                _ptr(x), _ptr(a0), _ptr(acc), _ptr(z), np.int64(T), np.int64(N), f32(lam),
                f32(theta * lam), f32(theta), f32(1.0 if scale is None else scale))
        if save_z:
            ctx.save_for_backward(z)
            ctx.meta = (scale, surrogate, y.dtype, y.shape)
        return acc.view(y.shape)

    @staticmethod
    def backward(ctx, grad_acc: Tensor):
        import numpy as np

        (z,) = ctx.saved_tensors
        scale, surrogate, dtype, shape = ctx.meta
        g = grad_acc.to(torch.float32).reshape(z.shape).contiguous()
        dy = torch.empty_like(z)
        _launch(backward_source(surrogate, scale is not None), z.device, z.numel(), _ptr(g),
                _ptr(z), _ptr(dy), np.int64(z.numel()), np.float32(1.0 if scale is None else scale))
        return dy.reshape(shape).to(dtype), None, None, None, None, None
