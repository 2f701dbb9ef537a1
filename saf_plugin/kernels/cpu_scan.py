"""Backend ``"cpu"``: the SAF scan and step as C++ operators for CPU tensors (``saf_cpu.cpp`` in
this package, compiled with g++ at first use).

One fused pass instead of several PyTorch element-wise operations, with every product and sum
rounded as PyTorch rounds it (the equations and the rounding rules are at the head of
``saf_cpu.cpp``): â, s and z are bit-identical to :mod:`saf_plugin.core` in fp32 and fp64, and so
are the SAF-E gradients of SpikingJelly's ``Sigmoid`` and ``ATan`` (computed with their own
formulas in their operation order) and the SAF-F gradient. Other surrogates have no C++
derivative: :func:`available` says so, and the dispatcher uses ``"torch"`` for them.

The operators are ``torch.ops.saf_cpu.scan``, ``.step``, ``.step_f`` (forward, with their
autograd in C++; SAF-F's keeps one byte per neuron for its backward, not the input) and
``.e_backward``, ``.f_backward``, with fake implementations registered
here, so ``torch.compile`` keeps each as one node. The library is built once per
source, torch version and machine into ``$TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``); without a compiler :func:`load` returns False and :func:`why`
says why.
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

from ..modes import Mode
from . import torch_scan

SOURCE = Path(__file__).with_name("saf_cpu.cpp")
FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-std=c++20", "-fPIC", "-shared"]
SURROGATES = {"Sigmoid": 0, "ATan": 1}  # spikingjelly.activation_based.surrogate classes
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)  # fp16/bf16: fp32 state

_LOADED: Optional[bool] = None
_WHY = ""


def surrogate_kind(surrogate: Optional[Callable]) -> Optional[tuple[int, float]]:
    """(kind, α) of a SpikingJelly surrogate whose derivative the operators compute, else None.

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


def available(y: Tensor, surrogate, mode: str) -> tuple[bool, str]:
    if y.device.type != "cpu":
        return False, "the C++ operators need CPU tensors"
    if y.dtype not in DTYPES:
        return False, f"the C++ operators run fp32/fp64 state, not for {y.dtype}"
    if mode == Mode.E and surrogate_kind(surrogate) is None:
        return False, (f"surrogate {type(surrogate).__name__} has no C++ derivative "
                       "(SpikingJelly's Sigmoid and ATan have one)")
    if os.environ.get("SAF_PLUGIN_NO_CPU_SCAN", "") not in ("", "0"):
        return False, "SAF_PLUGIN_NO_CPU_SCAN is set"
    if not load():
        return False, _WHY
    return True, ""


def scan(y: Tensor, acc0: Optional[Tensor], *, lam: float, theta: float,
         scale: Optional[float], surrogate, mode: str, c: Optional[Tensor], grad: bool,
         spikes: bool):
    sd = torch_scan.state_dtype(y)
    if mode == Mode.F:
        return torch_scan.f_by_steps(y, acc0, lam=lam, theta=theta, scale=scale, c=c, grad=grad,
                                     forward=_forward, step=step)
    kind, alpha = surrogate_kind(surrogate)
    acc, _, spk = torch.ops.saf_cpu.scan(y.to(sd), acc0, lam, theta, scale, kind, alpha, grad,
                                         spikes)
    return acc.to(y.dtype), acc[-1].detach(), spk.to(y.dtype) if spikes else None


def _forward(y: Tensor, acc0: Optional[Tensor], lam: float, theta: float,
             scale: Optional[float]) -> Tensor:
    """â of ``y`` [T, ...] (state dtype), without graph."""
    return torch.ops.saf_cpu.scan(y, acc0, lam, theta, scale, -1, 0.0, False, False)[0]


_OPS: dict = {}


def _op(name: str):
    """The operator's one overload, ``torch.ops.saf_cpu.<name>.default`` (called directly: the
    overload packet's resolution costs a few microseconds per step)."""
    op = _OPS.get(name)
    if op is None:
        op = _OPS[name] = getattr(torch.ops.saf_cpu, name).default
    return op


def step(y: Tensor, acc0: Optional[Tensor], *, lam: float, theta: float,
         scale: Optional[float], surrogate, mode: str, c: Optional[Tensor], grad: bool):
    if not grad and not torch.compiler.is_compiling():
        with torch._C._AutoDispatchBelowAutograd():  # no graph: the CPU kernel itself (the
            return _step(y, acc0, lam, theta, scale, surrogate, mode, c, False)  # Autograd
    return _step(y, acc0, lam, theta, scale, surrogate, mode, c, grad)  # kernel saves for
                                                                         # backward always)


def _step(y, acc0, lam, theta, scale, surrogate, mode, c, grad):
    if mode == Mode.F:
        return _op("step_f")(y, acc0, lam, theta, scale, c,
                             torch_scan.CLAMP_GRAD_AT_ZERO, grad)[0], None
    kind, alpha = surrogate_kind(surrogate)
    acc, spk, _ = _op("step")(y, acc0, lam, theta, scale, kind, alpha, grad)
    return acc, spk if acc0 is not None else acc


# ----------------------------------------------------------------------------- building


def _build_dir() -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "torch_extensions")
    key = "\n".join([SOURCE.read_text(), " ".join(FLAGS), torch.__version__, sys.version,
                     os.uname().machine, str(torch._C._GLIBCXX_USE_CXX11_ABI)])
    return Path(root) / f"saf_cpu_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _compile(out: Path) -> None:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) found")
    out.parent.mkdir(parents=True, exist_ok=True)
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    root = Path(torch.__file__).parent  # the headers and libraries of the torch wheel
    inc = [f"-I{root / 'include'}", f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}"]
    libs = [f"-L{root / 'lib'}", f"-Wl,-rpath,{root / 'lib'}"]
    # a private name first, then an atomic rename: concurrent first uses do not clash
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cxx, *FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *inc, str(SOURCE), "-o", tmp, *libs,
           "-lc10", "-ltorch_cpu", "-ltorch"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{cxx} failed:\n{p.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@torch.compiler.assume_constant_result  # torch.compile runs it once while tracing, not inside
def load() -> bool:
    """Build (first use) and load the operator library; False, with :func:`why`, if it cannot."""
    global _LOADED, _WHY
    if _LOADED is not None:
        return _LOADED
    try:
        lib = _build_dir() / "saf_cpu.so"
        if not lib.exists():
            _compile(lib)
        torch.ops.load_library(str(lib))
        _register()
        _LOADED = True
    except Exception as e:  # no compiler, no headers, a read-only cache: use the torch scan
        _LOADED, _WHY = False, f"the C++ CPU operators could not be built ({type(e).__name__}: {e})"
    return _LOADED


def why() -> str:
    """Why :func:`load` failed ("" if it did not, or was not called)."""
    return _WHY


# ----------------------------------------------------------------------------- registration


def _register() -> None:
    fake = torch.library.register_fake

    @fake("saf_cpu::scan")
    def _(y, acc0, lam, theta, scale, kind, alpha, save_z, save_s):
        return (torch.empty_like(y), torch.empty_like(y) if save_z else y.new_empty(0),
                torch.empty_like(y) if save_s else y.new_empty(0))

    @fake("saf_cpu::step")
    def _(y, acc0, lam, theta, scale, kind, alpha, save_z):
        return (torch.empty_like(y), torch.empty_like(y) if acc0 is not None else y.new_empty(0),
                torch.empty_like(y) if save_z else y.new_empty(0))

    @fake("saf_cpu::step_f")
    def _(y, acc0, lam, theta, scale, c, grad_at_zero, save_code):
        return (torch.empty_like(y),
                torch.empty_like(y, dtype=torch.uint8) if save_code else y.new_empty(0,
                                                                                   dtype=torch.uint8))

    @fake("saf_cpu::e_backward")
    def _(z, grad_acc, grad_spk, scale, kind, alpha):
        return torch.empty_like(z)

    @fake("saf_cpu::f_backward")
    def _(grad, code, theta, scale, dtype):
        return grad.new_empty(code.shape)
