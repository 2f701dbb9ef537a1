"""The SAF scan as one C++ operator for CPU tensors, compiled at first use (g++).

The same recurrence as :mod:`.torch_scan`, one fused pass instead of several PyTorch
element-wise operations per step (``docs/theory.md``; â[t−1] is a constant):

    z[t] = κ Y[t] − (θλ) â[t−1] − θ,   â[t] = λ â[t−1] + H(z[t]),   H(x) = [x >= 0]

Each product and sum is rounded as PyTorch rounds it (scalars are rounded to the state dtype
first; compiled with ``-ffp-contract=off``, so no fused multiply-add), so â is bit-identical
to the torch scan in fp32 and fp64. SAF-E backward, element-wise over [T, ...]:

    ∂L/∂Y[t] = κ σ'(z[t]) ∂L/∂â[t]

with σ' the surrogate's own formula, evaluated in its operation order: SpikingJelly's
``Sigmoid`` (σ' = α sg (1 − sg), sg = sigmoid(α z), the sigmoid from ATen) and ``ATan``
(σ' = (α/2) / (1 + (π α z / 2)²)). Other surrogates have no fused backward here: the
dispatcher runs the torch scan for them.

The operators are ``torch.ops.saf_cpu_scan.forward`` / ``.backward`` (``torch.library``, with
fake implementations). The library is built once per source, torch version and machine into
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``); without a compiler
:func:`load` returns None and says why.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <algorithm>
#include <tuple>

namespace {

constexpr int64_t kBlock = 2048;  // elements of one step kept in cache across the T steps

template <typename T, bool SCALE, bool PREV, bool SAVEZ, bool SAVES>
void step(const T* __restrict y, const T* __restrict prev, T* __restrict acc, T* __restrict z,
          T* __restrict spk, int64_t n, T lam, T tl, T theta, T scale) {
  for (int64_t i = 0; i < n; ++i) {
    T u = SCALE ? y[i] * scale : y[i];
    if (PREV) u = u - tl * prev[i];
    const T zz = u - theta;
    const T s = zz >= T(0) ? T(1) : T(0);
    acc[i] = PREV ? lam * prev[i] + s : s;
    if (SAVEZ) z[i] = zz;
    if (SAVES) spk[i] = s;
  }
}

template <typename T, bool SCALE, bool SAVEZ, bool SAVES>
void scan(const T* y, const T* a0, T* acc, T* z, T* spk, int64_t steps, int64_t n,
          T lam, T tl, T theta, T scale) {
  at::parallel_for(0, n, kBlock, [&](int64_t b0, int64_t b1) {
    for (int64_t c0 = b0; c0 < b1; c0 += kBlock) {
      const int64_t len = std::min(kBlock, b1 - c0);
      for (int64_t t = 0; t < steps; ++t) {
        const int64_t o = t * n + c0;
        T* zt = SAVEZ ? z + o : nullptr;
        T* st = SAVES ? spk + o : nullptr;
        const T* prev = t > 0 ? acc + o - n : (a0 ? a0 + c0 : nullptr);
        if (prev)
          step<T, SCALE, true, SAVEZ, SAVES>(y + o, prev, acc + o, zt, st, len, lam, tl, theta,
                                             scale);
        else
          step<T, SCALE, false, SAVEZ, SAVES>(y + o, nullptr, acc + o, zt, st, len, lam, tl,
                                              theta, scale);
      }
    }
  });
}

template <typename T, bool SCALE>
void run_scaled(const T* yp, const T* a0p, T* ap, T* zp, T* sp, int64_t steps, int64_t n, T l,
                T tl, T th, T k) {
  if (zp && sp) scan<T, SCALE, true, true>(yp, a0p, ap, zp, sp, steps, n, l, tl, th, k);
  else if (zp) scan<T, SCALE, true, false>(yp, a0p, ap, zp, sp, steps, n, l, tl, th, k);
  else if (sp) scan<T, SCALE, false, true>(yp, a0p, ap, zp, sp, steps, n, l, tl, th, k);
  else scan<T, SCALE, false, false>(yp, a0p, ap, zp, sp, steps, n, l, tl, th, k);
}

template <typename T>
void run(const at::Tensor& y, const at::Tensor& a0, at::Tensor& acc, at::Tensor& z,
         at::Tensor& spk, double lam, double theta, c10::optional<double> scale) {
  const int64_t steps = y.size(0), n = steps ? y.numel() / steps : 0;
  const T* a0p = a0.defined() ? a0.data_ptr<T>() : nullptr;
  T* zp = z.numel() ? z.data_ptr<T>() : nullptr;
  T* sp = spk.numel() ? spk.data_ptr<T>() : nullptr;
  const T l = static_cast<T>(lam), tl = static_cast<T>(theta * lam), th = static_cast<T>(theta);
  const T k = static_cast<T>(scale.value_or(1.0));
  if (scale.has_value())
    run_scaled<T, true>(y.data_ptr<T>(), a0p, acc.data_ptr<T>(), zp, sp, steps, n, l, tl, th, k);
  else
    run_scaled<T, false>(y.data_ptr<T>(), a0p, acc.data_ptr<T>(), zp, sp, steps, n, l, tl, th, k);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& y_in, const c10::optional<at::Tensor>& acc0, double lam, double theta,
    c10::optional<double> scale, bool save_z, bool save_s) {
  TORCH_CHECK(y_in.device().is_cpu(), "saf_cpu_scan: CPU tensors only");
  TORCH_CHECK(y_in.scalar_type() == at::kFloat || y_in.scalar_type() == at::kDouble,
              "saf_cpu_scan: float32 or float64 input, not ", y_in.scalar_type());
  TORCH_CHECK(y_in.dim() >= 1, "saf_cpu_scan: input [T, ...]");
  const at::Tensor y = y_in.contiguous();
  at::Tensor a0;
  if (acc0.has_value() && acc0->defined()) {
    a0 = acc0->to(y.scalar_type()).contiguous();
    TORCH_CHECK(y.size(0) == 0 || a0.numel() * y.size(0) == y.numel(),
                "saf_cpu_scan: the carried state has ", a0.numel(), " elements, one step has ",
                y.size(0) ? y.numel() / y.size(0) : 0);
  }
  at::Tensor acc = at::empty_like(y);
  at::Tensor z = save_z ? at::empty_like(y) : at::empty({0}, y.options());
  at::Tensor spk = save_s ? at::empty_like(y) : at::empty({0}, y.options());
  if (y.scalar_type() == at::kFloat) run<float>(y, a0, acc, z, spk, lam, theta, scale);
  else run<double>(y, a0, acc, z, spk, lam, theta, scale);
  return {acc, z, spk};
}

// dY = κ σ'(z) dÂ; kind 0: SpikingJelly Sigmoid, 1: SpikingJelly ATan (their op order).
template <typename T>
void backward_loop(const T* __restrict z, const T* __restrict g, const T* sg, T* out,
                   int64_t n, int64_t kind, double alpha,
                   c10::optional<double> scale) {
  const T k = static_cast<T>(scale.value_or(1.0));
  const bool has_k = scale.has_value();
  if (kind == 0) {
    const T a = static_cast<T>(alpha);
    at::parallel_for(0, n, 8 * kBlock, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        T r = g[i] * (T(1) - sg[i]);
        r = r * sg[i];
        r = r * a;
        out[i] = has_k ? r * k : r;
      }
    });
  } else {
    const double half = alpha / 2;
    const T a = static_cast<T>(half), pa = static_cast<T>(M_PI * half);
    at::parallel_for(0, n, 8 * kBlock, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const T ax = pa * z[i];
        const T d = T(1) / (ax * ax + T(1));
        T r = d * a;
        r = r * g[i];
        out[i] = has_k ? r * k : r;
      }
    });
  }
}

at::Tensor backward(const at::Tensor& z_in, const at::Tensor& grad, c10::optional<double> scale,
                    int64_t kind, double alpha) {
  TORCH_CHECK(kind == 0 || kind == 1, "saf_cpu_scan: unknown surrogate kind ", kind);
  const at::Tensor z = z_in.contiguous();
  const at::Tensor g = grad.to(z.scalar_type()).contiguous();
  TORCH_CHECK(g.numel() == z.numel(), "saf_cpu_scan: gradient and saved tensor differ in size");
  at::Tensor sg = kind == 0 ? at::mul(z, alpha).sigmoid_() : z;  // ATen's own sigmoid
  at::Tensor out = kind == 0 ? sg : at::empty_like(z);  // Sigmoid: in place, element by element
  if (z.scalar_type() == at::kFloat)
    backward_loop<float>(z.data_ptr<float>(), g.data_ptr<float>(), sg.data_ptr<float>(),
                         out.data_ptr<float>(), z.numel(), kind, alpha, scale);
  else
    backward_loop<double>(z.data_ptr<double>(), g.data_ptr<double>(), sg.data_ptr<double>(),
                          out.data_ptr<double>(), z.numel(), kind, alpha, scale);
  return out;
}

}  // namespace

TORCH_LIBRARY(saf_cpu_scan, m) {
  m.def("forward(Tensor y, Tensor? acc0, float lam, float theta, float? scale, bool save_z, "
        "bool save_s) -> (Tensor, Tensor, Tensor)");
  m.def("backward(Tensor z, Tensor grad, float? scale, int kind, float alpha) -> Tensor");
}

TORCH_LIBRARY_IMPL(saf_cpu_scan, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
}
"""

FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-std=c++20", "-fPIC", "-shared"]
SURROGATES = {"Sigmoid": 0, "ATan": 1}  # spikingjelly.activation_based.surrogate classes

_LOADED: Optional[bool] = None
_WHY = ""


def surrogate_kind(surrogate: Optional[Callable]) -> Optional[tuple[int, float]]:
    """(kind, α) of a SpikingJelly surrogate whose derivative the operator computes, else None.

    Only the exact classes (a subclass may change the formula), in spiking mode, with a
    float α."""
    cls = type(surrogate)
    if cls.__module__ != "spikingjelly.activation_based.surrogate":
        return None
    kind = SURROGATES.get(cls.__name__)
    alpha = getattr(surrogate, "alpha", None)
    if kind is None or not getattr(surrogate, "spiking", False) or not isinstance(alpha, float):
        return None
    return kind, alpha


def _build_dir() -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "torch_extensions")
    key = "\n".join([SOURCE, " ".join(FLAGS), torch.__version__, sys.version, os.uname().machine,
                     str(torch._C._GLIBCXX_USE_CXX11_ABI)])
    return Path(root) / f"saf_cpu_scan_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _compile(out: Path) -> None:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) found")
    out.parent.mkdir(parents=True, exist_ok=True)
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    root = Path(torch.__file__).parent  # the headers and libraries of the torch wheel
    inc = [f"-I{root / 'include'}", f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}"]
    libs = [f"-L{root / 'lib'}", f"-Wl,-rpath,{root / 'lib'}"]
    # private names first, then an atomic rename: concurrent first uses do not clash
    fd, src = tempfile.mkstemp(suffix=".cpp", dir=out.parent)
    with os.fdopen(fd, "w") as f:
        f.write(SOURCE)
    tmp = src[:-4] + ".so"
    cmd = [cxx, *FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *inc, src, "-o", tmp, *libs,
           "-lc10", "-ltorch_cpu", "-ltorch"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{cxx} failed:\n{p.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        for path in (src, tmp):
            if os.path.exists(path):
                os.unlink(path)


def load() -> bool:
    """Build (first use) and load the operator library; False, with :func:`why`, if it cannot."""
    global _LOADED, _WHY
    if _LOADED is not None:
        return _LOADED
    try:
        lib = _build_dir() / "saf_cpu_scan.so"
        if not lib.exists():
            _compile(lib)
        torch.ops.load_library(str(lib))
        _register()
        _LOADED = True
    except Exception as e:  # no compiler, no headers, a read-only cache: use the torch scan
        _LOADED, _WHY = False, f"the C++ CPU scan could not be built ({type(e).__name__}: {e})"
    return _LOADED


def why() -> str:
    """Why :func:`load` failed ("" if it did not, or was not called)."""
    return _WHY


def _register() -> None:
    @torch.library.register_fake("saf_cpu_scan::forward")
    def _(y, acc0, lam, theta, scale, save_z, save_s):
        return (torch.empty_like(y), torch.empty_like(y) if save_z else y.new_empty(0),
                torch.empty_like(y) if save_s else y.new_empty(0))

    @torch.library.register_fake("saf_cpu_scan::backward")
    def _(z, grad, scale, kind, alpha):
        return torch.empty_like(z)


class CpuScan(torch.autograd.Function):
    """(â, s) = scan(Y) [T, ...] (fp32 or fp64) with the SAF-E gradient of the surrogate
    (kind, α); ``acc0`` (â[t0−1]) is a constant. The spikes s[t] = H(z[t]) (written in the same
    pass, 0-element when not asked for) take the gradient of â[t], as s[t] = â[t] − λ â[t−1]
    with â[t−1] a constant: ∂L/∂Y[t] = κ σ'(z[t]) (∂L/∂â[t] + ∂L/∂s[t])."""

    @staticmethod
    def forward(ctx, y: Tensor, acc0: Optional[Tensor], lam: float, theta: float,
                scale: Optional[float], kind: int, alpha: float, spikes: bool):
        acc, z, spk = torch.ops.saf_cpu_scan.forward(y, acc0, lam, theta, scale,
                                                     ctx.needs_input_grad[0], spikes)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(z)
        ctx.scale, ctx.kind, ctx.alpha = scale, kind, alpha
        ctx.set_materialize_grads(False)
        return acc, spk

    @staticmethod
    def backward(ctx, grad_acc: Optional[Tensor], grad_spk: Optional[Tensor]):
        (z,) = ctx.saved_tensors
        if grad_acc is None or grad_spk is None:
            grad = grad_spk if grad_acc is None else grad_acc
        else:
            grad = grad_acc + grad_spk
        if grad is None:
            return (None,) * 8
        g = torch.ops.saf_cpu_scan.backward(z, grad, ctx.scale, ctx.kind, ctx.alpha)
        return g, None, None, None, None, None, None, None


def scan_e(y: Tensor, acc0: Optional[Tensor], lam: float, theta: float, scale: Optional[float],
           surrogate: Callable, spikes: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """SAF-E scan of ``y`` [T, ...] in its own dtype (fp32/fp64): (â, s or None); ``surrogate``
    must have a :func:`surrogate_kind`."""
    kind, alpha = surrogate_kind(surrogate)
    acc, spk = CpuScan.apply(y, acc0, lam, theta, scale, kind, alpha, spikes)
    return acc, spk if spikes else None


def scan_nograd(y: Tensor, acc0: Optional[Tensor], lam: float, theta: float,
                scale: Optional[float], surrogate: Optional[Callable] = None,
                spikes: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """The forward only (H(x) = [x >= 0], the forward of every :func:`surrogate_kind`
    surrogate), no graph: (â, s or None)."""
    acc, _, spk = torch.ops.saf_cpu_scan.forward(y.detach(), acc0, lam, theta, scale, False,
                                                 spikes)
    return acc, spk if spikes else None

