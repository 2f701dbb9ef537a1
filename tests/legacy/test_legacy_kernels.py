"""The SAF kernels generated through SpikingJelly 0.0.0.0.14's auto_cuda (saf_plugin.kernels.cupy014).

CPU: the CUDA sources compiled for sm_90 with NVRTC (from PyTorch's CUDA wheels; nvcc if
absent) and their PTX read: no fused multiply-add in the forward; the same sources run on CPU
(g++, no FP contraction) against the torch scan. GPU (marked ``gpu``): the compiled kernels
against the "torch" backend, which tests/test_kernels.py proves bit-identical to the oracle.
"""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import surrogate

from saf_plugin import core, kernels
from saf_plugin.kernels import cupy014


def _nvrtc_library():
    """libnvrtc from the NVIDIA wheels PyTorch's CUDA build installs (nvidia/*/lib)."""
    import glob
    import os
    import sys

    for d in sys.path:
        for path in sorted(glob.glob(os.path.join(d, "nvidia", "*", "lib", "libnvrtc.so.*"))):
            return path
    return None


def compile_ptx(src: str, name: str, options=()) -> str:
    """CUDA C -> PTX for sm_90 (H100) with NVRTC (no GPU needed), else nvcc."""
    import ctypes
    import shutil
    import subprocess
    import tempfile

    path = _nvrtc_library()
    if path is None:
        nvcc = shutil.which("nvcc")
        assert nvcc, "neither NVRTC (PyTorch's CUDA wheels) nor nvcc found: cannot compile"
        with tempfile.TemporaryDirectory() as d:
            cu, ptx = f"{d}/{name}.cu", f"{d}/{name}.ptx"
            open(cu, "w").write(src)
            subprocess.run([nvcc, "--ptx", "-arch=compute_90", *options, cu, "-o", ptx], check=True)
            return open(ptx).read()
    lib = ctypes.CDLL(path)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), f"{name}.cu".encode(),
                                  0, None, None) == 0
    opts = [b"--gpu-architecture=compute_90", *(o.encode() for o in options)]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    assert rc == 0, f"NVRTC: {lib.nvrtcGetErrorString(rc).decode()}\n{log.value.decode()}\n{src}"
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode()


def fused(ptx: str) -> list[str]:
    """PTX lines that fuse a multiply and an add (fma/mad), which round once instead of twice."""
    return [line for line in ptx.splitlines() if line.strip().startswith(("fma", "mad"))]


@pytest.mark.parametrize("decay_input", [False, True])
@pytest.mark.parametrize("has_acc0", [False, True])
@pytest.mark.parametrize("save_z", [False, True])
def test_forward_source_compiles_for_sm90_without_fma(decay_input, has_acc0, save_z):
    src, name = cupy014.forward_source(decay_input, has_acc0, save_z)
    assert name in src and cupy014.forward_source(decay_input, has_acc0, save_z) == (src, name)
    assert "long long i" in src and "spike" not in src  # 64-bit indices; no unused spike write
    assert ("z[i] = zz;" in src) == save_z
    ptx = compile_ptx(src, name, cupy014.OPTIONS)
    assert f".entry {name}(" in ptx
    assert fused(ptx) == []  # every product and sum rounds on its own, as in the PyTorch scan


@pytest.mark.parametrize("sur", [surrogate.Sigmoid(alpha=4.0), surrogate.ATan(alpha=2.0)])
@pytest.mark.parametrize("decay_input", [False, True])
def test_backward_source_compiles_for_sm90(sur, decay_input):
    assert cupy014.surrogate_codes(sur) is not None
    src, name = cupy014.backward_source(sur, decay_input)
    assert "const float sg" in src and ("sg), scale)" in src) == decay_input
    assert f".entry {name}(" in compile_ptx(src, name, cupy014.OPTIONS)


_SHIM = r"""
#include <cmath>
#define __global__
struct Idx { long long x; };
static Idx blockIdx, blockDim = {1}, threadIdx = {0};
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
"""


def emulate(source, params: str, tmp_path):
    """The CUDA kernel ``source`` as a CPU function: one "block" of one thread per index,
    compiled by g++ without FP contraction (what the __f*_rn intrinsics guarantee on a GPU)."""
    import ctypes
    import shutil
    import subprocess

    src, name = source
    if shutil.which("g++") is None:
        pytest.skip("no g++")
    names = ", ".join(p.split()[-1] for p in params.split(","))
    code = (_SHIM + src + f'\nextern "C" void run({params}, long long blocks) {{\n'
            f"  for (long long b = 0; b < blocks; ++b) {{ blockIdx.x = b; {name}({names}); }}\n}}\n")
    (tmp_path / f"{name}.cpp").write_text(code)
    lib = tmp_path / f"{name}.so"
    subprocess.run(["g++", "-O2", "-ffp-contract=off", "-shared", "-fPIC",
                    str(tmp_path / f"{name}.cpp"), "-o", str(lib)], check=True)
    run = ctypes.CDLL(str(lib)).run
    kinds = {"float*": ctypes.c_void_p, "long": ctypes.c_longlong, "float": ctypes.c_float}
    run.argtypes = [kinds["float*" if "*" in p else p.split()[-2]] for p in params.split(",")
                    ] + [ctypes.c_longlong]  # set at once: ctypes reads the list on assignment
    return run


@pytest.mark.parametrize("decay_input", [False, True])
@pytest.mark.parametrize("carried", [False, True])
@pytest.mark.parametrize("sur", [surrogate.Sigmoid(alpha=4.0), surrogate.ATan(alpha=2.0)])
def test_sources_emulated_on_cpu_equal_the_torch_scan(decay_input, carried, sur, tmp_path):
    """The CUDA C sources run on CPU (g++): â bit-identical to backend="torch", thresholds hit
    exactly, carried state; dL/dY within 1e-5 relative (the surrogate's CUDA code)."""
    T, N, lam, theta = 7, 301, 0.5, 1.0
    scale = 1.0 - lam if decay_input else None
    g = torch.Generator().manual_seed(int(decay_input) + 2 * int(carried))
    y = (torch.randn(T, N, generator=g) + 0.8).cumsum(0) / 2
    y[0, :2] = torch.tensor([theta / (scale or 1.0), 0.0])  # u[0] = θ exactly (no state)
    acc0 = (torch.rand(N, generator=g) * 2).round() if carried else None
    fwd = emulate(cupy014.forward_source(decay_input, carried, True),
                  "const float* y, const float* acc0, float* acc, float* z, long long T, "
                  "long long N, float lam, float theta_lam, float theta, float scale", tmp_path)
    acc, z = torch.empty(T, N), torch.empty(T, N)
    fwd(y.data_ptr(), 0 if acc0 is None else acc0.data_ptr(), acc.data_ptr(), z.data_ptr(), T, N,
        lam, theta * lam, theta, scale or 1.0, N)
    w = torch.linspace(-1, 2, T * N).view(T, N)
    bwd = emulate(cupy014.backward_source(sur, decay_input),
                  "const float* g, const float* z, float* dy, long long numel, float scale",
                  tmp_path)
    dy = torch.empty(T, N)
    bwd(w.data_ptr(), z.data_ptr(), dy.data_ptr(), T * N, scale or 1.0, T * N)
    yy = y.clone().requires_grad_(True)
    ref, _ = kernels.scan(yy, acc0, lam=lam, theta=theta, input_scale=scale, surrogate=sur,
                          backend="torch")
    (ref * w).sum().backward()
    assert torch.equal(acc, ref.detach())
    if not carried:
        assert acc[0, 0] == 1 and acc[0, 1] == 0  # H(0) = 1
    torch.testing.assert_close(dy, yy.grad, rtol=1e-5, atol=1e-5 * yy.grad.abs().max().item())


def test_kernel_names_are_stable_across_processes():
    """A name from hashlib, not hash(): CuPy's disk cache finds the kernel in the next process."""
    import subprocess
    import sys

    code = ("from saf_plugin.kernels import cupy014; from spikingjelly.activation_based import "
            "surrogate; print(cupy014.backward_source(surrogate.Sigmoid(), True)[1])")
    names = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip() for _ in range(2)}
    assert names == {cupy014.backward_source(surrogate.Sigmoid(), True)[1]}
    assert cupy014.backward_source(surrogate.Sigmoid(alpha=2.0), True)[1] not in names


def test_surrogate_without_cuda_code_is_refused():
    sur = surrogate.PiecewiseQuadratic()
    assert cupy014.surrogate_codes(sur) is None


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("decay_input", [False, True])
@pytest.mark.parametrize("T,shape", [(1, (7,)), (6, (128, 33)), (16, (3, 64, 5))])
@pytest.mark.parametrize("sur", [surrogate.Sigmoid(alpha=4.0), surrogate.ATan(alpha=2.0)])
def test_cupy_kernel_vs_torch_backend(dtype, decay_input, T, shape, sur):
    lam, theta = 0.5, 1.0
    scale = 1.0 - lam if decay_input else None
    g = torch.Generator(device="cuda").manual_seed(T)
    y = ((torch.randn((T, *shape), device="cuda", generator=g) + 0.8).cumsum(0) / 2)
    y[0].view(-1)[:3] = torch.tensor([theta, theta / (scale or 1.0), 0.0])  # exactly at θ
    y = y.to(dtype)
    ok, why = kernels.available("cupy", y, sur)
    if not ok:
        pytest.skip(why)
    acc0 = (torch.rand(shape, device="cuda") * 2).round()
    res = {}
    for backend in ("torch", "cupy"):
        yy = y.clone().requires_grad_(True)
        acc, last = kernels.scan(yy, acc0, lam=lam, theta=theta, input_scale=scale,
                                 surrogate=sur, backend=backend)
        (acc.float() * torch.linspace(-1, 1, acc.numel(), device="cuda").view(acc.shape)).sum().backward()
        res[backend] = (acc, last, yy.grad)
    assert torch.equal(res["cupy"][0], res["torch"][0])
    assert torch.equal(res["cupy"][1], res["torch"][1])
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(res["cupy"][2].float(), res["torch"][2].float(), rtol=tol, atol=1e-6)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backend", ["cupy", "triton"])
def test_saf_f_kernels(backend):
    """SAF-F needs no surrogate: the Triton scan runs it with this generation too."""
    y = (torch.rand(6, 4096, device="cuda") * 3).requires_grad_(True)
    sur = surrogate.Sigmoid()
    ok, why = kernels.available(backend, y, sur, mode="F")
    if not ok:
        pytest.skip(why)
    c = core.bias_series(0, 6, 0.5, like=y)[-1]
    res = {}
    for b in (backend, "torch"):
        yy = y.detach().clone().requires_grad_(True)
        a = kernels.scan(yy, None, lam=0.5, theta=1.0, surrogate=sur, mode="F", c_last=c, backend=b)[0]
        a[-1].sum().backward()
        res[b] = (a, yy.grad)
    assert torch.equal(res[backend][0], res["torch"][0])
    assert torch.equal(res[backend][1], res["torch"][1])
