"""The Triton SAF scan and step (saf_plugin.kernels.triton_scan, triton_kernels,
triton_step) verified without a GPU.

- Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors. Triton reads that variable
  once, so these tests run in their own process: :func:`test_interpreted_kernels` starts
  ``pytest`` on this file with the variable set, and the ``interpret`` tests only run there.
  They compare ``backend="triton"`` with ``backend="torch"`` (itself bit-identical to the
  oracle, tests/test_kernels.py): â bit for bit, dL/dY within 1e-5 relative (SAF-E: the
  surrogate's Triton derivative) or bit for bit (SAF-F).
- Every kernel variant compiled for sm_90 (the H100) with ``triton.compile``; the PTX of the
  variants whose rounding must match the PyTorch scan holds no fused multiply-add.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

from saf_plugin import core, kernels

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
interpret = pytest.mark.skipif(not INTERPRET, reason="runs in test_interpreted_kernels' process")
triton = pytest.importorskip("triton")


def test_interpreted_kernels():
    """This file's ``interpret`` tests, in a process with TRITON_INTERPRET=1; none may skip."""
    if INTERPRET:
        pytest.skip("already interpreting")
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                        "-k", "not sm90 and not test_interpreted_kernels", __file__], env=env, capture_output=True, text=True,
                       timeout=900)
    tail = r.stdout[-3000:] + r.stderr[-2000:]
    assert r.returncode == 0, tail
    assert " passed" in r.stdout and " skipped" not in r.stdout.splitlines()[-1], tail


# ----------------------------------------------------------------------------- interpreted


def _surrogate(name):
    from spikingjelly.activation_based import surrogate as sg

    return {"sigmoid": sg.Sigmoid(alpha=4.0), "atan": sg.ATan(alpha=2.0)}[name]


def _inputs(T, shape, dtype, seed, theta, scale):
    g = torch.Generator().manual_seed(seed)
    y = (torch.randn((T, *shape), generator=g) * 1.5 + 0.8).cumsum(0) / 2
    flat = y.view(T, -1)
    rho = 1.0 if scale is None else scale
    flat[0, :2] = torch.tensor([theta / rho, 0.0])[:flat.shape[1]]  # u[0] = θ exactly
    if flat.shape[1] > 2:
        flat[-1, -1] = 0.0  # SAF-F's gradient at Y = 0 is torch's clamp's
    return y.to(dtype)


def _run(backend, y, acc0, mode, surrogate, lam, theta, scale, c):
    yy = y.clone().requires_grad_(True)
    acc, last = kernels.scan(yy, acc0, lam=lam, theta=theta, input_scale=scale,
                             surrogate=surrogate, mode=mode, c_last=c, backend=backend)
    w = torch.linspace(-1, 2, acc.numel()).view(acc.shape).to(acc.dtype)
    (acc * w).float().sum().backward()
    return acc, last, yy.grad


CASES = [  # (T, shape, λ, θ, decay_input): odd sizes, one and several blocks of 256
    (1, (1,), 0.5, 1.0, False),
    (6, (3, 7), 0.5, 1.0, True),
    (16, (257,), 1.0 - 1.0 / 3.0, 0.5, False),
    (5, (2, 300), 1.0, 1.3, False),
    (3, (513,), 0.75, 1.0, True),
]


@interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode,sname", [("E", "sigmoid"), ("E", "atan"), ("F", None)])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("carried", [False, True])
def test_triton_equals_torch_scan(dtype, mode, sname, case, carried):
    T, shape, lam, theta, decay_input = CASES[case]
    scale = 1.0 - lam if decay_input else None
    y = _inputs(T, shape, dtype, case, theta, scale)
    acc0 = (torch.rand(shape, generator=torch.Generator().manual_seed(9)) * 2).round() if carried else None
    c = core.bias_series(3 if carried else 0, T, lam, like=torch.empty(0))[-1] if mode == "F" else None
    sur = _surrogate(sname) if sname else None
    a_t, last_t, g_t = _run("triton", y, acc0, mode, sur, lam, theta, scale, c)
    a_o, last_o, g_o = _run("torch", y, acc0, mode, sur, lam, theta, scale, c)
    assert a_t.dtype == dtype and g_t.dtype == dtype and last_t.dtype == torch.float32
    assert not last_t.requires_grad  # the carried state holds no graph
    assert torch.equal(a_t, a_o) and torch.equal(last_t, last_o)  # bit for bit
    if not carried and theta != 1.3:  # u[0] = θ exactly (1.3 is not exact in bf16/fp16)
        s0 = a_t.float().view(T, -1)[0]
        assert s0[0] == 1 and (s0[1:2] == 0).all()  # H(0) = 1
    if dtype == torch.float32:
        torch.testing.assert_close(g_t, g_o, rtol=1e-5, atol=1e-5 * g_o.abs().max().item())
    else:  # one rounding of the same fp32 value: equal, or one unit in the last place apart
        torch.testing.assert_close(g_t, g_o, rtol=torch.finfo(dtype).eps, atol=0)
    if mode == "F":
        assert (g_t[:-1] == 0).all() and g_t[-1].abs().sum() > 0


@interpret
@pytest.mark.parametrize("name", ["Sigmoid", "ATan", "PiecewiseQuadratic", "PiecewiseExp",
                                  "SoftSign", "SuperSpike", "Erf"])
def test_every_spikingjelly_triton_surrogate(name):
    """Every surrogate the dispatcher accepts: SpikingJelly's Triton derivative agrees with its
    PyTorch backward."""
    from spikingjelly.activation_based import surrogate as sg

    sur = getattr(sg, name)()
    assert kernels.available("triton", torch.zeros(1), sur)[0]
    y = _inputs(6, (300,), torch.float32, 5, 1.0, None)
    a_t, _, g_t = _run("triton", y, None, "E", sur, 0.5, 1.0, None, None)
    a_o, _, g_o = _run("torch", y, None, "E", sur, 0.5, 1.0, None, None)
    assert torch.equal(a_t, a_o)
    torch.testing.assert_close(g_t, g_o, rtol=1e-5, atol=1e-5 * g_o.abs().max().item())


@interpret
def test_surrogate_without_triton_derivative_is_refused():
    from spikingjelly.activation_based import surrogate as sg

    ok, why = kernels.available("triton", torch.zeros(1), lambda x: (x >= 0).float())
    assert not ok and "no Triton derivative" in why
    assert not kernels.available("triton", torch.zeros(1), sg.Sigmoid(spiking=False))[0]
    assert kernels.available("triton", torch.zeros(1), None, mode="F")[0]  # SAF-F needs none


@interpret
def test_bf16_rounds_to_nearest_even():
    """The explicit fp32 -> bf16 rounding equals PyTorch's: ties to even, inf, NaN, -0."""
    from saf_plugin.kernels import triton_kernels  # noqa: F401  (registers the ops)

    g = torch.tensor([[float("nan"), float("inf"), -float("inf"), 1 + 2**-8, 1 + 3 * 2**-8,
                       3.0e38, 3.4e38, -1 - 3 * 2**-9, 0.1, -0.0, 1e-40]])
    # SuperSpike (id 5) with α = 1 has σ'(0) = 1: the kernel stores g itself, rounded
    dy = torch.ops.saf_plugin.scan_e_backward(g, torch.zeros_like(g), None, 5, 1.0, torch.bfloat16)
    want = g.bfloat16()
    assert torch.equal(dy.isnan(), want.isnan())  # NaN stays NaN (payloads may differ)
    assert torch.equal(dy[~want.isnan()].view(torch.int16), want[~want.isnan()].view(torch.int16))


@interpret
def test_no_grad_saves_nothing_and_state_carries():
    """Two scans of halves, the state carried, equal one scan of the whole sequence."""
    sur = _surrogate("sigmoid")
    y = _inputs(8, (5, 9), torch.float32, 3, 1.0, None)
    whole, _ = kernels.scan(y, None, lam=0.5, theta=1.0, surrogate=sur, backend="triton")
    first, state = kernels.scan(y[:4], None, lam=0.5, theta=1.0, surrogate=sur, backend="triton")
    second, _ = kernels.scan(y[4:], state, lam=0.5, theta=1.0, surrogate=sur, backend="triton")
    assert not whole.requires_grad
    assert torch.equal(torch.cat([first, second]), whole)


@interpret
def test_ops_pass_opcheck_and_compile_in_one_graph():
    """torch.library.opcheck (schema, fake tensors, autograd registration) and torch.compile
    with fullgraph=True: the scan is one op in the graph, no break."""
    from saf_plugin.kernels import triton_kernels  # noqa: F401  (registers the ops)

    y = _inputs(4, (3, 5), torch.float32, 1, 1.0, None).requires_grad_(True)
    acc0 = torch.ones(3, 5)
    c = torch.tensor(1.875)
    torch.library.opcheck(torch.ops.saf_plugin.scan_e, (y, acc0, 0.5, 1.0, 0.5, 0, 4.0, True))
    torch.library.opcheck(torch.ops.saf_plugin.scan_f, (y, None, 0.5, 1.0, None, c))

    def f(y):
        acc, _, _ = torch.ops.saf_plugin.scan_e(y, acc0, 0.5, 1.0, None, 0, 4.0, True)
        return acc

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    g1, = torch.autograd.grad(compiled(y).sum(), y)
    g2, = torch.autograd.grad(f(y).sum(), y)
    assert torch.equal(g1, g2)


# ----------------------------------------------------------------------------- the step


def _step_run(backend, y, acc0, mode, surrogate, lam, theta, scale, c):
    """(â, s, dL/dY) of kernels.step, the upstream gradient reaching both outputs."""
    yy = y.clone().requires_grad_(True)
    acc, s = kernels.step(yy, acc0, lam=lam, theta=theta, input_scale=scale,
                          surrogate=surrogate, mode=mode, c=c, backend=backend)
    loss = (acc * torch.linspace(-1, 2, acc.numel()).view(acc.shape)).sum()
    if s is not None and s is not acc:
        loss = loss + (s * torch.linspace(2, -3, s.numel()).view(s.shape)).sum()
    loss.backward()
    return acc, s, yy.grad


@interpret
@pytest.mark.parametrize("mode,sname", [("E", "sigmoid"), ("E", "atan"), ("F", None)])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("carried", [False, True])
def test_triton_step_equals_torch_step(mode, sname, case, carried):
    """One fused step against the oracle (backend "torch" is core's code): â and s bit for bit;
    dL/dY bit for bit in SAF-F (Y = 0 and u = θ exactly included), within 1e-5 in SAF-E."""
    T, shape, lam, theta, decay_input = CASES[case]
    scale = 1.0 - lam if decay_input else None
    y = _inputs(2, shape, torch.float32, case, theta, scale)[-1 if carried else 0]
    acc0 = (torch.rand(shape, generator=torch.Generator().manual_seed(9)) * 2).round() if carried else None
    c = torch.tensor(1.75) if mode == "F" else None
    sur = _surrogate(sname) if sname else None
    a_t, s_t, g_t = _step_run("triton", y, acc0, mode, sur, lam, theta, scale, c)
    a_o, s_o, g_o = _step_run("torch", y, acc0, mode, sur, lam, theta, scale, c)
    assert torch.equal(a_t, a_o) and 0 < a_t.count_nonzero() < a_t.numel() or a_t.numel() < 3
    if mode == "E":
        assert torch.equal(s_t, s_o) and (s_t is a_t) == (not carried)
        torch.testing.assert_close(g_t, g_o, rtol=1e-5, atol=1e-5 * g_o.abs().max().item())
    else:
        assert s_t is None and s_o is None and torch.equal(g_t, g_o)
    assert g_t.abs().sum() > 0


@interpret
@pytest.mark.parametrize("mode", ["E", "F"])
def test_triton_steps_equal_the_triton_scan(mode):
    """T fused steps, the state carried, equal one scan bit for bit, forward and gradient."""
    T, shape, lam, theta = 6, (3, 97), 0.5, 1.0
    y = _inputs(T, shape, torch.float32, 4, theta, 0.5)
    sur = _surrogate("atan")
    c = core.bias_series(0, T, lam, like=y)
    a_s, _, g_s = _run("triton", y, None, mode, sur, lam, theta, 0.5, c[-1])
    yy = y.clone().requires_grad_(True)
    accs, prev = [], None
    for t in range(T):
        with torch.set_grad_enabled(mode == "E" or t == T - 1):
            a, _ = kernels.step(yy[t], prev, lam=lam, theta=theta, input_scale=0.5,
                                surrogate=sur, mode=mode, c=c[t], backend="triton")
        accs.append(a)
        prev = a.detach()
    acc = torch.stack(accs)
    (acc * torch.linspace(-1, 2, acc.numel()).view(acc.shape)).sum().backward()
    assert torch.equal(acc, a_s) and torch.equal(yy.grad, g_s)


@interpret
def test_step_ops_pass_opcheck_and_compile_in_one_graph():
    """The step's ops (their autograd is a torch.autograd.Function around them, see
    triton_step.StepE): opcheck without gradients; kernels.step under torch.compile with
    fullgraph=True, gradients included."""
    from saf_plugin.kernels import triton_step  # noqa: F401  (registers the ops)

    y = _inputs(1, (3, 5), torch.float32, 1, 1.0, None)[0].requires_grad_(True)
    acc0 = torch.ones(3, 5)
    c = torch.tensor(1.875)
    for a0 in (None, acc0):
        torch.library.opcheck(torch.ops.saf_plugin.step_e, (y.detach(), a0, 0.5, 1.0, 0.5, 0, 4.0, True))
        torch.library.opcheck(torch.ops.saf_plugin.step_f, (y.detach(), a0, 0.5, 1.0, None, c))
    g = torch.ones(3, 5)
    torch.library.opcheck(torch.ops.saf_plugin.step_e_backward, (y.detach(), g, g, 0.5, 1, 2.0))
    torch.library.opcheck(torch.ops.saf_plugin.step_f_backward, (g, y.detach(), c, 1.0, 0.5))

    def f(y):
        acc, s = kernels.step(y, acc0, lam=0.5, theta=1.0, surrogate=_surrogate("sigmoid"),
                              backend="triton")
        b, _ = kernels.step(y, None, lam=0.5, theta=1.0, input_scale=0.5, surrogate=None,
                            mode="F", c=c, backend="triton")
        return acc + 2 * s + b

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    g1, = torch.autograd.grad(compiled(y).sum(), y)
    g2, = torch.autograd.grad(f(y).sum(), y)
    assert torch.equal(g1, g2)


# ----------------------------------------------------------------------------- sm_90 PTX


def _variants():
    """(kernel, signature, constexprs, launch options) of every variant the scan and the step
    launch."""
    from saf_plugin.kernels import triton_kernels as tk
    from saf_plugin.kernels import triton_step

    ptr = {0: "*fp32", 1: "*fp16", 2: "*bf16"}
    for acc0, scale, save_z, kind in itertools.product((False, True), (False, True),
                                                       (False, True), (0, 1, 2)):
        sig = {"y_ptr": ptr[kind], "acc0_ptr": "*fp32", "acc_ptr": ptr[kind], "z_ptr": "*fp32",
               "last_ptr": "*fp32", "T": "i32", "N": "i32", "lam": "fp32",
               "theta_lam": "fp32", "theta": "fp32", "scale": "fp32"}
        yield tk._forward_kernel, sig, dict(HAS_ACC0=acc0, HAS_SCALE=scale, SAVE_Z=save_z,
                                            KIND=kind), tk.EXACT
    for scale, at_zero, kind in itertools.product((False, True), (False, True), (0, 1, 2)):
        sig = {"g_ptr": ptr[kind], "y_ptr": ptr[kind], "c_ptr": "*fp32", "dy_ptr": ptr[kind],
               "N": "i32", "theta": "fp32", "scale": "fp32"}
        yield tk._f_backward_kernel, sig, dict(HAS_SCALE=scale, GRAD_AT_ZERO=at_zero,
                                               KIND=kind), tk.EXACT
    for sid, g2, scale, kind in itertools.product(range(7), (False, True), (False, True),
                                                  (0, 1, 2)):
        if g2 and kind:  # the step (two gradients) is fp32 only
            continue
        sig = {"g_ptr": ptr[kind], "g2_ptr": ptr[kind], "z_ptr": "*fp32", "dy_ptr": ptr[kind],
               "numel": "i32", "alpha": "fp32", "scale": "fp32"}
        yield tk._e_backward_kernel, sig, dict(SURROGATE=sid, HAS_G2=g2, HAS_SCALE=scale,
                                               KIND=kind), {}
    for acc0, scale, saf_f, save_z in itertools.product((False, True), (False, True),
                                                        (False, True), (False, True)):
        if saf_f and save_z:  # SAF-F keeps no z
            continue
        sig = {"y_ptr": "*fp32", "acc0_ptr": "*fp32", "acc_ptr": "*fp32", "spk_ptr": "*fp32",
               "z_ptr": "*fp32", "c_ptr": "*fp32", "N": "i32", "lam": "fp32",
               "theta_lam": "fp32", "theta": "fp32", "scale": "fp32"}
        yield triton_step._step_kernel, sig, dict(HAS_ACC0=acc0, HAS_SCALE=scale, SAF_F=saf_f,
                                         SAVE_Z=save_z), tk.EXACT


def test_sm90_every_variant_compiles_and_exact_ones_have_no_fma():
    """Forwards (scan and step) and SAF-F backward compile with EXACT (no FP contraction):
    their PTX has no fma/mad, so every product and sum rounds on its own as in the PyTorch
    scan. SAF-E's backward (gradient within float tolerance) may fuse."""
    if INTERPRET:
        pytest.skip("compiles for the GPU, not for the interpreter")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from saf_plugin.kernels import triton_kernels as ts

    counts = {}
    for fn, sig, const, options in _variants():
        const = dict(const, BLOCK=ts.BLOCK)
        sig = dict(sig, **{k: "constexpr" for k in const})
        src = ASTSource(fn, sig, constexprs={(list(sig).index(k),): v for k, v in const.items()})
        ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
        fused = [ln for ln in ptx.splitlines() if ln.strip().startswith(("fma", "mad"))]
        name = f"{fn.__name__}{sorted(const.items())}"
        counts[name] = len(fused)
        if options == ts.EXACT:
            assert fused == [], name
            assert "div.full" not in ptx and "div.approx" not in ptx, name  # θ divides exactly
    assert len(counts) == 24 + 12 + (42 + 14) + 12
    # the control: the same forward compiled with Triton's default options does fuse
    fn, sig, const, _ = next(_variants())
    const = dict(const, BLOCK=ts.BLOCK)
    sig = dict(sig, **{k: "constexpr" for k in const})
    src = ASTSource(fn, sig, constexprs={(list(sig).index(k),): v for k, v in const.items()})
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    assert any(ln.strip().startswith("fma") for ln in ptx.splitlines())
