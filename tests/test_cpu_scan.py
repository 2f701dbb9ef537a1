"""The C++ CPU scan (saf_plugin.kernels backend "cpu") against the torch scan.

tests/test_kernels.py proves the "torch" backend bit-identical to the oracle (saf_plugin.core
step by step); here "cpu" must equal "torch": forward bit for bit (fp32, fp64; fp16/bf16 input
with fp32 state), SAF-E gradients of SpikingJelly's Sigmoid and ATan within 1e-6 relative,
carried state, thresholds hit exactly, sizes that do not fill the operator's blocks, SAF-F,
the no-grad path, the choice of "auto", and the one warning when the operator cannot be built.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from saf_plugin import kernels
from saf_plugin.kernels import cpu_scan


@pytest.fixture(scope="module", autouse=True)
def built():
    if not cpu_scan.load():
        pytest.skip(f"the C++ scan cannot be built here: {cpu_scan.why()}")


def surrogate(name):
    from spikingjelly.activation_based import surrogate as sg

    return {"sigmoid4": sg.Sigmoid(alpha=4.0), "sigmoid1.5": sg.Sigmoid(alpha=1.5),
            "atan2": sg.ATan(alpha=2.0), "atan3.7": sg.ATan(alpha=3.7)}[name]


# (step shape, T, λ, θ, κ): sizes below, at and above the operator's block of 2048 elements
CASES = [((1,), 1, 0.5, 1.0, None), ((3, 5), 7, 1.0 - 1 / 2.3, 1.3, None),
         ((2, 1023), 4, 0.5, 1.0, 0.5), ((2048,), 3, 1.0, 0.5, None),
         ((3, 7, 11, 13), 5, 1.0 - 1 / 1.7, 0.8, 1 / 1.7), ((4099,), 6, 0.75, 1.0, None),
         ((2, 3, 17, 17), 16, 0.5, 1.0, None), ((0, 3), 2, 0.5, 1.0, None)]


def inputs(shape, T, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    y = (torch.randn((T, *shape), generator=g, dtype=torch.float64) * 1.5 + 0.8).cumsum(0) / 2
    return y.to(dtype)


def carried(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed + 100)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 3).round().to(dtype)


def both(y, acc0, lam, theta, scale, sur, mode="E", c_last=None):
    """{backend: (â, last state, dY)} for "cpu" and "torch", with the same upstream gradient."""
    out = {}
    g = torch.Generator().manual_seed(7)
    w = None
    for backend in ("cpu", "torch"):
        yy = y.detach().clone().requires_grad_(True)
        acc, last = kernels.scan(yy, acc0, lam=lam, theta=theta, input_scale=scale, surrogate=sur,
                                 mode=mode, c_last=c_last, backend=backend)
        if w is None:
            w = torch.randn(acc.shape, generator=g, dtype=torch.float64).to(acc.dtype)
        (acc * w).sum().backward()
        out[backend] = (acc, last, yy.grad)
    return out


def assert_grad_close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-6,
                               atol=1e-6 * max(want.abs().max().item(), 1e-30) if want.numel() else 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sname", ["sigmoid4", "sigmoid1.5", "atan2", "atan3.7"])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("with_state", [False, True])
def test_saf_e_equals_torch_scan(dtype, sname, case, with_state):
    shape, T, lam, theta, scale = CASES[case]
    y = inputs(shape, T, dtype, seed=case)
    acc0 = carried(shape, dtype, case) if with_state else None
    r = both(y, acc0, lam, theta, scale, surrogate(sname))
    (a, la, ga), (b, lb, gb) = r["cpu"], r["torch"]
    assert a.dtype == dtype and la.dtype == dtype
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert_grad_close(ga, gb)
    if y.numel() > 100:  # the inputs make it fire, but not always
        from saf_plugin import core

        assert 0 < core.deaccumulate(a.detach(), lam, acc0).mean() < 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_run_fp32_state(dtype):
    y = inputs((5, 301), 6, dtype, seed=3)
    r = both(y, None, 0.5, 1.0, 0.5, surrogate("sigmoid4"))
    (a, la, ga), (b, lb, gb) = r["cpu"], r["torch"]
    assert a.dtype == dtype and la.dtype == torch.float32 and ga.dtype == dtype
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert_grad_close(ga.float(), gb.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_saf_f_equals_torch_scan(dtype, case):
    from saf_plugin import core

    shape, T, lam, theta, scale = CASES[case]
    y = inputs(shape, T, dtype, seed=case + 10)
    c = core.bias_series(0, T, lam, like=y)[-1]
    r = both(y, carried(shape, dtype, case), lam, theta, scale, None, mode="F", c_last=c)
    (a, la, ga), (b, lb, gb) = r["cpu"], r["torch"]
    assert torch.equal(a, b) and torch.equal(la, lb) and torch.equal(ga, gb)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_carried_state_equals_one_scan(dtype):
    """Two calls carrying â (step mode 'm' over chunks of a sequence) equal one call."""
    y = inputs((3, 257), 9, dtype, seed=4)
    sur = surrogate("atan2")
    whole, _ = kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur, backend="cpu")
    head, state = kernels.scan(y[:4], None, lam=0.5, theta=1.0, surrogate=sur, backend="cpu")
    tail, last = kernels.scan(y[4:], state, lam=0.5, theta=1.0, surrogate=sur, backend="cpu")
    assert torch.equal(torch.cat([head, tail]), whole) and torch.equal(last, whole[-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_threshold_exactly_hit_fires(dtype, lam):
    """u[t] == θ exactly (binary fractions) fires (H(0) = 1) in both backends."""
    y = torch.tensor([[1.0, 0.75, 1.0], [1.0 + lam, 0.5, 1.0 + lam - 2.0 ** -20],
                      [2.0 * lam + 1.0, 3.0, 0.0]], dtype=dtype)
    r = both(y, None, lam, 1.0, None, surrogate("sigmoid4"))
    (a, _, ga), (b, _, gb) = r["cpu"], r["torch"]
    assert torch.equal(a, b)
    assert_grad_close(ga, gb)
    s = a.detach()[1] - lam * a.detach()[0]
    assert a[0, 0] == 1 and s[0] == 1 and a[0, 1] == 0 and s[2] == 0


def test_no_grad_equals_torch_and_has_no_graph():
    y = inputs((4, 1000), 5, torch.float32, seed=5).requires_grad_(True)
    sur = surrogate("sigmoid4")
    with torch.no_grad():
        a, _ = kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur, backend="cpu")
        b, _ = kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur, backend="torch")
    assert not a.requires_grad and torch.equal(a, b)


def test_auto_picks_cpu_and_torch_for_other_surrogates():
    from spikingjelly.activation_based import surrogate as sg

    y = torch.zeros(2, 3)
    assert kernels._choose("auto", y, surrogate("atan2"), "E") == "cpu"
    assert kernels._choose("auto", y, None, "F") == "cpu"
    kernels.reset_warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a surrogate without a C++ derivative: torch, silently
        assert kernels._choose("auto", y, sg.PiecewiseQuadratic(), "E") == "torch"
    with pytest.raises(kernels.BackendUnavailableError, match="derivative"):
        kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sg.PiecewiseQuadratic(),
                     backend="cpu")


def test_no_compiler_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_scan, "_LOADED", None)
    monkeypatch.setattr(cpu_scan, "_WHY", "")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    kernels.reset_warnings()
    y = inputs((3, 10), 4, torch.float32, seed=6)
    sur = surrogate("sigmoid4")
    with pytest.warns(RuntimeWarning, match="could not be built.*falling back to backend .torch."):
        a, _ = kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b, _ = kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur, mode="F")
    assert torch.equal(a, kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur,
                                       backend="torch")[0])
    with pytest.raises(kernels.BackendUnavailableError, match="could not be built"):
        kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur, backend="cpu")
    kernels.reset_warnings()


def int_dtype(t) -> int:
    """The ScalarType number of t's dtype (what saf_cpu::f_backward takes)."""
    return {torch.float32: 6, torch.float64: 7}[t.dtype]


def test_operators_pass_opcheck():
    """torch.library.opcheck (schema, fake tensors, registered autograd) of every operator."""
    y = inputs((2, 33), 3, torch.float32, seed=8).requires_grad_(True)
    acc0 = carried((2, 33), torch.float32, 8)
    c = torch.tensor(1.75)
    ops = torch.ops.saf_cpu
    for args in ((y, None, 0.5, 1.0, 0.5, 0, 4.0, True, True), (y, acc0, 0.5, 1.0, None, 1, 2.0, True, False)):
        torch.library.opcheck(ops.scan.default, args)
    for args in ((y[0], None, 0.5, 1.0, 0.5, 0, 4.0, True), (y[0], acc0, 0.5, 1.0, None, 1, 2.0, True)):
        torch.library.opcheck(ops.step.default, args)
    for at_zero in (False, True):
        torch.library.opcheck(ops.step_f.default, (y[0], acc0, 0.5, 1.0, 0.5, c, at_zero, True))
    z = ops.scan(y.detach(), None, 0.5, 1.0, 0.5, 0, 4.0, True, False)[1]
    g = torch.ones_like(z)
    for args in ((z, g, None, 0.5, 0, 4.0), (z, None, g, None, 1, 2.0), (z, g, g, 0.5, 0, 4.0)):
        torch.library.opcheck(ops.e_backward.default, args)
    code = ops.step_f(y[0].detach(), None, 0.5, 1.0, 0.5, c, False, True)[1]
    torch.library.opcheck(ops.f_backward.default, (g[0], code, 1.0, 0.5, int_dtype(y)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [1, 4, 6])
@pytest.mark.parametrize("grad", [True, False])
def test_spikes_from_the_scan_are_the_fired_spikes_with_the_gradient_of_acc(dtype, case, grad):
    """s[t] written in the scan's pass = round(â[t] − λ â[t−1]), the neuron's exact 0/1; its
    gradient is that of â[t] (â[t−1] a constant)."""
    from saf_plugin import core

    shape, T, lam, theta, scale = CASES[case]
    y = inputs(shape, T, dtype, seed=case)
    acc0 = carried(shape, dtype, case)
    sur = surrogate("sigmoid4")
    g = torch.Generator().manual_seed(3)
    w_acc, w_spk = (torch.randn((T, *shape), generator=g, dtype=dtype) for _ in range(2))
    res = {}
    for spikes in (True, False):
        yy = y.detach().clone().requires_grad_(grad)
        out = kernels.scan(yy, acc0, lam=lam, theta=theta, input_scale=scale, surrogate=sur,
                           backend="cpu", spikes=spikes)
        acc = out[0]
        if spikes:
            spk = out[2]
        else:
            assert len(out) == 2
            spk = acc - torch.cat([acc0.unsqueeze(0), acc[:-1]]).detach() * lam
        if grad:
            ((acc * w_acc).sum() + (spk * w_spk).sum()).backward()
        res[spikes] = (acc.detach(), spk.detach(), yy.grad)
    (a, s, ga), (b, s_ref, gb) = res[True], res[False]
    assert torch.equal(a, b)
    assert torch.equal(s, s_ref.round()) and 0 < s.mean() < 1
    assert torch.equal(s, core.deaccumulate(a, lam, acc0).round())
    if grad:
        assert_grad_close(ga, gb)
