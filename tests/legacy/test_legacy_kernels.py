"""The SAF kernels generated through SpikingJelly 0.0.0.0.14's auto_cuda (saf_plugin.kernels.cupy014).

CPU: the generated CUDA source (no compiler needed). GPU (marked ``gpu``): the compiled kernels
against the "torch" backend, which tests/test_kernels.py proves bit-identical to the oracle.
"""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import surrogate

from saf_plugin import core, kernels
from saf_plugin.kernels import cupy014


@pytest.mark.parametrize("decay_input", [False, True])
def test_forward_kernel_source(decay_input):
    k = cupy014.SAFFPTTKernel(decay_input)
    src = k.full_codes
    assert isinstance(k, cupy014.NeuronFPTTKernel)
    assert "h_seq[t] = __fsub_rn(" in src and "__fmul_rn(theta_lam, v_v_seq[t])" in src
    assert "v_v_seq[t + dt] = __fadd_rn(__fmul_rn(lam, v_v_seq[t]), spike_seq[t]);" in src
    assert ("__fmul_rn(x_seq[t], scale)" in src) == decay_input
    assert "spike_seq[t] = (h_seq[t] - v_th) >= 0.0f ? 1.0f: 0.0f;" in src


@pytest.mark.parametrize("sur", [surrogate.Sigmoid(alpha=4.0), surrogate.ATan(alpha=2.0)])
def test_backward_kernel_source(sur):
    assert cupy014.surrogate_codes(sur) is not None
    k = cupy014.backward_kernel(sur, decay_input=True)
    src = k.full_codes
    assert isinstance(k, cupy014.NeuronBPTTKernel)
    assert "grad_x_seq[t] = grad_spike_seq[t] * grad_s_to_h * grad_h_to_x;" in src
    assert "grad_v_init[index]" not in src  # no gradient into â[t-1]: it is a constant
    assert cupy014.backward_kernel(sur, True) is k


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
def test_cupy_saf_f():
    y = (torch.rand(6, 4096, device="cuda") * 3).requires_grad_(True)
    sur = surrogate.Sigmoid()
    if not kernels.available("cupy", y, sur)[0]:
        pytest.skip("no cupy")
    c = core.bias_series(0, 6, 0.5, like=y)[-1]
    a = kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur, mode="F", c_last=c, backend="cupy")[0]
    b = kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur, mode="F", c_last=c, backend="torch")[0]
    assert torch.equal(a, b)
