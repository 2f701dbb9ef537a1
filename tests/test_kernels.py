"""The SAF scan dispatcher (saf_plugin.kernels) against the oracle: saf_plugin.core step by step.

CPU: the "torch" backend over generated shapes, T, dtypes, surrogates, decay_input, a carried
state and inputs exactly at the threshold; explicit unavailable backends raise; "auto" warns
once on fallback. GPU (marked ``gpu``): every backend that can run on CUDA vs the oracle.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from saf_plugin import core, kernels
from saf_plugin.kernels import BackendUnavailableError


# ----------------------------------------------------------------------------- oracle


def oracle(y, acc_prev, lam, theta, scale, surrogate, mode="E", c_last=None):
    """core.saf_e_step / saf_f_step step by step, as neuron_step's loop runs them."""
    out, acc = [], acc_prev
    T = y.shape[0]
    for t in range(T):
        yt = y[t] * scale if scale is not None else y[t]
        if mode == "E":
            a, _ = core.saf_e_step(yt, acc, lam, theta, surrogate)
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and t == T - 1):
                a, _ = core.saf_f_step(yt, acc, lam, theta, c_last)
        out.append(a)
        acc = a.detach()
    return torch.stack(out)


def surrogates():
    from spikingjelly.activation_based import surrogate as sg

    return {"sigmoid4": sg.Sigmoid(alpha=4.0), "atan2": sg.ATan(alpha=2.0),
            "pwq": sg.PiecewiseQuadratic(alpha=1.0), "custom": _custom_surrogate}


class _FastSigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / (25 * x.abs() + 1) ** 2


def _custom_surrogate(x):
    return _FastSigmoid.apply(x)


def cases(n, seed=0):
    """Generated (shape, T, lam, theta, scale) cases, reproducible."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ndim = int(torch.randint(1, 4, (), generator=g))
        shape = tuple(int(torch.randint(1, 6, (), generator=g)) for _ in range(ndim))
        T = int(torch.randint(1, 9, (), generator=g))
        tau = float(torch.empty(()).uniform_(1.2, 4.0, generator=g))
        lam = [0.5, 1.0, 1.0 - 1.0 / tau][i % 3]
        theta = [1.0, 0.5, 1.3][i % 3]
        scale = None if i % 2 else 1.0 - lam if lam < 1 else None
        out.append((shape, T, lam, theta, scale))
    return out


def inputs(shape, T, dtype, seed, device="cpu", requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    y = (torch.randn((T, *shape), generator=g, dtype=torch.float64) * 1.5 + 0.8).cumsum(0) / 2
    return y.to(device=device, dtype=dtype).requires_grad_(requires_grad)


def run_both(y, acc0, lam, theta, scale, sur, mode="E", backend="torch", c_last=None):
    """(kernel â, kernel dY, oracle â, oracle dY) with the same upstream gradient."""
    sd = torch.float64 if y.dtype == torch.float64 else torch.float32
    y_k = y.detach().clone().requires_grad_(True)
    acc_k, last = kernels.scan(y_k, acc0, lam=lam, theta=theta, input_scale=scale,
                               surrogate=sur, mode=mode, c_last=c_last, backend=backend)
    w = torch.linspace(-1, 2, acc_k.numel(), dtype=sd, device=y.device).view(acc_k.shape)
    w = w.to(y.dtype).to(sd)  # the upstream gradient as it reaches a half-precision â
    (acc_k.to(sd) * w).sum().backward()
    y_o = y.detach().clone().to(sd).requires_grad_(True)
    acc_o = oracle(y_o, None if acc0 is None else acc0.to(sd), lam, theta, scale, sur, mode, c_last)
    (acc_o * w).sum().backward()
    assert last.dtype == sd and torch.equal(last, acc_k[-1].to(sd)) or y.dtype != sd
    return acc_k, y_k.grad, acc_o, y_o.grad


# ----------------------------------------------------------------------------- CPU: torch


def assert_grad_close(got, want):
    """The forward is bit-identical; the backward evaluates the surrogate's derivative in one
    vectorised call over [T, ...] instead of per step, so it may differ in the last bits."""
    eps = torch.finfo(want.dtype).eps
    torch.testing.assert_close(got, want, rtol=8 * eps, atol=8 * eps * want.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sname", ["sigmoid4", "atan2", "pwq", "custom"])
@pytest.mark.parametrize("case", range(12))
def test_torch_backend_forward_is_bit_identical_to_oracle(dtype, sname, case):
    shape, T, lam, theta, scale = cases(12)[case]
    sur = surrogates()[sname]
    y = inputs(shape, T, dtype, seed=case)
    acc0 = None if case % 4 == 0 else (torch.rand(shape, dtype=dtype) * 2).round()
    acc_k, g_k, acc_o, g_o = run_both(y, acc0, lam, theta, scale, sur)
    assert acc_k.dtype == dtype
    assert torch.equal(acc_k, acc_o)
    assert_grad_close(g_k, g_o)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(6))
def test_half_inputs_run_fp32_state(dtype, case):
    """fp16/bf16 in: the scan runs in fp32 (the oracle on the upcast input), â comes back in
    the input dtype, the carried state in fp32, dY in the input dtype."""
    shape, T, lam, theta, scale = cases(6, seed=1)[case]
    sur = surrogates()["sigmoid4"]
    y = inputs(shape, T, dtype, seed=case)
    acc_k, g_k, acc_o, g_o = run_both(y, None, lam, theta, scale, sur)
    assert acc_k.dtype == dtype and g_k.dtype == dtype
    assert torch.equal(acc_k, acc_o.to(dtype))
    assert_grad_close(g_k.float(), g_o.to(dtype).float())
    _, last = kernels.scan(y.detach(), None, lam=lam, theta=theta, input_scale=scale,
                           surrogate=sur, backend="torch")
    assert last.dtype == torch.float32 and torch.equal(last, acc_o[-1].detach())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", range(8))
def test_saf_f_matches_oracle(dtype, case):
    shape, T, lam, theta, scale = cases(8, seed=2)[case]
    y = inputs(shape, T, dtype, seed=case)
    c = core.bias_series(0, T, lam, like=y.detach())[-1]
    acc_k, g_k, acc_o, g_o = run_both(y, None, lam, theta, scale, None, mode="F", c_last=c)
    assert torch.equal(acc_k, acc_o)
    assert_grad_close(g_k, g_o)
    assert (g_k[:-1] == 0).all()  # SAF-F: gradient at the final step only


@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_inputs_exactly_at_threshold_fire(lam):
    """u[t] == θ exactly (binary fractions: exact arithmetic) fires, as H(0) = 1 in the oracle."""
    theta = 1.0
    # step 0: Y = 1 -> u = 1 = θ fires, â = 1; step 1: u = Y - θλ·1 = θ  -> Y = 1 + λ
    y = torch.tensor([[1.0, 0.75], [1.0 + lam, 0.5 + lam * 0.0], [2.0 * lam + 1.0, 3.0]])
    sur = surrogates()["sigmoid4"]
    acc_k, g_k, acc_o, g_o = run_both(y, None, lam, theta, None, sur)
    assert torch.equal(acc_k, acc_o)
    assert_grad_close(g_k, g_o)
    spikes = core.deaccumulate(acc_k.detach(), lam)
    assert spikes[0, 0] == 1 and spikes[1, 0] == 1 and spikes[0, 1] == 0


def test_no_grad_and_constant_input():
    sur = surrogates()["sigmoid4"]
    y = inputs((3, 4), 5, torch.float32, seed=3, requires_grad=False)
    acc, last = kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur)
    assert not acc.requires_grad
    assert torch.equal(acc, oracle(y, None, 0.5, 1.0, None, sur))


# ----------------------------------------------------------------------------- selection


def test_explicit_unavailable_backend_raises():
    y = torch.zeros(2, 3)
    sur = surrogates()["sigmoid4"]
    for backend, words in (("cupy", "CUDA"), ("triton", "CUDA")):
        with pytest.raises(BackendUnavailableError, match=words):
            kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur, backend=backend)
    with pytest.raises(ValueError, match="unknown scan backend"):
        kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur, backend="sj2")
    with pytest.raises(ValueError, match="mode"):
        kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur, mode="X")


def test_auto_fallback_warns_once(monkeypatch):
    """On CUDA without a fused kernel "auto" falls back to "torch" and says so, once."""
    kernels.reset_warnings()
    monkeypatch.setattr(kernels, "_is_cuda", lambda y: True)
    y = inputs((4,), 3, torch.float32, seed=0)
    sur = surrogates()["sigmoid4"]
    with pytest.warns(RuntimeWarning, match="falling back to backend .torch."):
        a, _ = kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b, _ = kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur)
    assert torch.equal(a, b)
    kernels.reset_warnings()


def test_auto_on_cpu_is_silent_torch():
    kernels.reset_warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.scan(torch.ones(2, 2), None, lam=0.5, theta=1.0, surrogate=surrogates()["atan2"])


# ----------------------------------------------------------------------------- in a model


@pytest.mark.parametrize("mode", ["E", "F"])
def test_model_multistep_scan_equals_single_step_loop(mode, float64):
    """set_saf in step mode 'm' (the dispatcher) equals step mode 's' (the per-step oracle)."""
    import copy

    import saf_plugin
    from spikingjelly.activation_based import functional, layer, neuron

    def lif():
        return neuron.LIFNode(tau=2.0, decay_input=True, v_reset=None)

    net_s = torch.nn.Sequential(layer.Linear(6, 16), lif(), layer.Linear(16, 8), lif(),
                                layer.Linear(8, 3))
    with torch.no_grad():
        for m in net_s:
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(3.0)
    net_m = copy.deepcopy(net_s)
    functional.set_step_mode(net_m, "m")
    saf_plugin.set_saf(net_s, mode)
    saf_plugin.set_saf(net_m, mode)
    x = torch.rand(5, 4, 6) * 2
    out_s = torch.stack([net_s(x[t]) for t in range(5)])
    out_m = net_m(x)
    torch.testing.assert_close(out_m, out_s, rtol=0, atol=1e-12)
    (out_s[-1].sum() if mode == "F" else out_s.sum()).backward()
    (out_m[-1].sum() if mode == "F" else out_m.sum()).backward()
    for (n, p_s), p_m in zip(net_s.named_parameters(), net_m.parameters()):
        torch.testing.assert_close(p_m.grad, p_s.grad, rtol=1e-10, atol=1e-12, msg=n)


# ----------------------------------------------------------------------------- GPU

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
GPU_BACKENDS = ["torch", "triton", "cupy"]


def _runnable(backend, y, sur):
    ok, why = kernels.available(backend, y, sur)
    if not ok:
        pytest.skip(f"{backend}: {why}")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sname", ["sigmoid4", "atan2", "custom"])
@pytest.mark.parametrize("case", range(6))
def test_gpu_backend_vs_oracle(backend, dtype, sname, case):
    shape, T, lam, theta, scale = cases(6, seed=4)[case]
    shape = (shape[0] * 97,) + shape[1:]  # more than one CUDA block
    sur = surrogates()[sname]
    y = inputs(shape, T, dtype, seed=case, device="cuda")
    _runnable(backend, y, sur)
    acc0 = None if case % 2 else (torch.rand(shape, device="cuda") * 2).round()
    acc_k, g_k, acc_o, g_o = run_both(y, acc0, lam, theta, scale, sur, backend=backend)
    assert torch.equal(acc_k, acc_o.to(dtype))  # spikes identical: every rounding matches
    if backend == "torch":
        assert_grad_close(g_k.float(), g_o.to(dtype).float())
    else:  # the surrogate's CUDA code rounds differently in the last bits
        torch.testing.assert_close(g_k.float(), g_o.to(dtype).float(), rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-6)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_threshold_and_saf_f(backend):
    lam, theta = 0.5, 1.0
    y = torch.tensor([[1.0, 0.75], [1.5, 0.5], [2.0, 3.0]], device="cuda").repeat(1, 300)
    sur = surrogates()["sigmoid4"]
    _runnable(backend, y, sur)
    acc_k, _, acc_o, _ = run_both(y, None, lam, theta, None, sur, backend=backend)
    assert torch.equal(acc_k, acc_o)
    c = core.bias_series(0, 3, lam, like=y)[-1]
    acc_k, g_k, acc_o, g_o = run_both(y, None, lam, theta, None, None, mode="F",
                                      backend=backend, c_last=c)
    assert torch.equal(acc_k, acc_o)
    assert_grad_close(g_k, g_o)


@pytest.mark.gpu
@gpu
def test_gpu_explicit_fp64_triton_raises_and_auto_runs():
    y = torch.zeros(2, 3, device="cuda")
    sur = surrogates()["sigmoid4"]
    with pytest.raises(BackendUnavailableError, match="float64"):
        kernels.scan(y.double(), None, lam=0.5, theta=1.0, surrogate=sur, backend="triton")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc, _ = kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur)
    assert acc.is_cuda
