"""kernels.step, the fused neuron step of step mode 's', and the one backend interface.

The oracle is the code neuron_step.step ran before the fused step: core.lif_spike and
core.accumulate_step (SAF-E), core.saf_f_step (SAF-F), on ρ Y. Every backend that runs here
("torch", "cpu"; "triton" in tests/test_triton_scan.py under the interpreter; CUDA ones marked
``gpu``) must equal it bit for bit: â, s and dL/dY (upstream gradients into â and s), fp32 and
fp64, SpikingJelly's Sigmoid and ATan, with and without decay_input, at t = 0 and later, with
membranes exactly at the threshold and inputs exactly 0. The "cpu" step is one operator forward
and one backward; a SpikingJelly Linear + LIF model in step mode 's' gives the oracle's outputs
and gradients with fewer aten operations; torch.compile (Inductor, fullgraph) equals eager.
"""

from __future__ import annotations

import collections
import configparser
import fnmatch
import inspect
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from saf_plugin import core, kernels
from saf_plugin.kernels import cpu_scan

ROOT = Path(__file__).resolve().parent.parent
CPU_BACKENDS = ["torch", "cpu"]


def oracle(y, acc_prev, lam, theta, scale, surrogate, mode, c):
    """neuron_step.step's arithmetic before the fused step."""
    scaled = y * scale if scale is not None else y
    if mode == "F":
        return core.saf_f_step(scaled, acc_prev, lam, theta, c)[0], None
    s, _ = core.lif_spike(scaled, acc_prev, lam, theta, surrogate)
    s = s.to(scaled.dtype)
    return core.accumulate_step(s, acc_prev, lam), s


def surrogate(name):
    from spikingjelly.activation_based import surrogate as sg

    return {"sigmoid": sg.Sigmoid(alpha=4.0), "atan": sg.ATan(alpha=2.0), None: None}[name]


# (shape, λ, θ, ρ): binary fractions (exact ties) and others
CASES = [((4, 33), 0.5, 1.0, None), ((4, 33), 0.5, 1.0, 0.5), ((3, 2, 5, 7), 1 - 1 / 2.3, 0.7, None),
         ((2, 4099), 0.75, 1.3, 0.25), ((1,), 1.0, 0.5, None)]


def inputs(shape, dtype, seed, lam, theta, scale, carried):
    """Y [shape] (u[0] = θ exactly where the constants allow, Y = 0 exactly at [1]) and â[t−1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(shape, generator=g, dtype=torch.float64) * 1.5 + 0.8
    acc = (torch.rand(shape, generator=g, dtype=torch.float64) * 2).round() if carried else None
    flat = y.view(-1)
    a0 = float(acc.view(-1)[0]) if carried else 0.0
    flat[0] = (theta + theta * lam * a0) / (scale or 1.0)
    if flat.numel() > 1:
        flat[1] = 0.0
    return y.to(dtype), None if acc is None else acc.to(dtype)


def run(fn, y, acc_prev, c):
    """(â, s, dL/dY) of ``fn(y, acc_prev, c)``, upstream gradients into both outputs."""
    yy = y.clone().requires_grad_(True)
    acc, s = fn(yy, acc_prev, c)
    loss = (acc * torch.linspace(-1, 2, acc.numel(), dtype=acc.dtype).view(acc.shape)).sum()
    if s is not None and s is not acc:
        loss = loss + (s * torch.linspace(3, -2, s.numel(), dtype=s.dtype).view(s.shape)).sum()
    loss.backward()
    return acc.detach(), None if s is None else s.detach(), yy.grad, s is acc


def both(backend, y, acc_prev, lam, theta, scale, sur, mode):
    c = torch.tensor(1.75, dtype=y.dtype, device=y.device) if mode == "F" else None

    def fused(yy, a, cc):
        return kernels.step(yy, a, lam=lam, theta=theta, input_scale=scale, surrogate=sur,
                            mode=mode, c=cc, backend=backend)

    def reference(yy, a, cc):
        return oracle(yy, a, lam, theta, scale, sur, mode, cc)

    return run(fused, y, acc_prev, c), run(reference, y, acc_prev, c)


def assert_identical(got, want, mode, carried):
    (a, s, g, s_is_a), (a_o, s_o, g_o, s_is_a_o) = got, want
    assert torch.equal(a, a_o) and a.dtype == a_o.dtype and a.stride() == a_o.stride()
    assert torch.equal(g, g_o), (g - g_o).abs().max()
    assert g.abs().sum() > 0 and (a.numel() < 3 or 0 < a.count_nonzero() < a.numel())
    if mode == "F":
        assert s is None and s_o is None
    else:
        assert torch.equal(s, s_o) and s_is_a == s_is_a_o == (not carried)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode,sname", [("E", "sigmoid"), ("E", "atan"), ("F", None)])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("carried", [False, True])
def test_step_is_bit_identical_to_the_oracle(backend, dtype, mode, sname, case, carried):
    shape, lam, theta, scale = CASES[case]
    y, acc_prev = inputs(shape, dtype, case, lam, theta, scale, carried)
    got, want = both(backend, y, acc_prev, lam, theta, scale, surrogate(sname), mode)
    assert_identical(got, want, mode, carried)
    if case < 2 and mode == "E":  # u[0] = θ exactly fires (H(0) = 1)
        assert got[1 if carried else 0].view(-1)[0] == 1


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode,sname", [("E", "atan"), ("F", None)])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("carried", [False, True])
def test_step_without_a_graph_is_the_oracle_bit_for_bit(backend, dtype, mode, sname, case,
                                                         carried):
    """No graph to build (SAF-F's steps before the last; torch.no_grad): the "cpu" step runs
    its kernel below autograd, and the spikes are read without an autograd.Function; â and s
    are still the oracle's, bit for bit, with its layouts."""
    from saf_plugin import neuron_step

    shape, lam, theta, scale = CASES[case]
    y, acc_prev = inputs(shape, dtype, case, lam, theta, scale, carried)
    c = torch.tensor(1.75, dtype=y.dtype) if mode == "F" else None
    with torch.no_grad():
        acc, s = kernels.step(y, acc_prev, lam=lam, theta=theta, input_scale=scale,
                              surrogate=surrogate(sname), mode=mode, c=c, backend=backend)
        acc_o, s_o = oracle(y, acc_prev, lam, theta, scale, surrogate(sname), mode, c)
        assert torch.equal(acc, acc_o) and acc.stride() == acc_o.stride()
        assert not acc.requires_grad
        if mode == "E":
            assert torch.equal(s, s_o)
        spikes = neuron_step.spikes_of(acc, acc_prev, lam, False)
    graph = neuron_step.spikes_of(acc.clone().requires_grad_(), acc_prev, lam, False)
    assert torch.equal(spikes, graph) and spikes.stride() == graph.stride()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode,sname", [("E", "atan"), ("F", None)])
def test_layouts_are_those_of_the_oracle(backend, mode, sname):
    """A channels-last input (and state) gives channels-last results, as PyTorch's element-wise
    operations do; a non-dense input (every other channel) gives the same values."""
    y, acc_prev = inputs((2, 6, 5, 4), torch.float32, 3, 0.5, 1.0, 0.5, True)
    cl = torch.channels_last
    for yy, aa in ((y.to(memory_format=cl), acc_prev.to(memory_format=cl)),
                   (y[:, ::2], acc_prev[:, ::2]), (y.to(memory_format=cl), acc_prev)):
        got, want = both(backend, yy, aa, 0.5, 1.0, 0.5, surrogate(sname), mode)
        for x, x_o in zip(got[:3], want[:3]):
            assert x is None or torch.equal(x, x_o)
        if aa.stride() == yy.stride() and yy.is_contiguous(memory_format=cl):
            assert_identical(got, want, mode, True)


def test_half_precision_runs_the_oracle():
    """fp16/bf16: the PyTorch step, which computes in that dtype as the oracle does."""
    for dtype in (torch.float16, torch.bfloat16):
        y, acc_prev = inputs((4, 33), dtype, 1, 0.5, 1.0, None, True)
        got, want = both("auto", y, acc_prev, 0.5, 1.0, None, surrogate("sigmoid"), "E")
        assert_identical(got, want, "E", True)


# ----------------------------------------------------------------------------- operations


class Ops(TorchDispatchMode):
    """Counts every operation that reaches the dispatcher below autograd."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def built():
    if not cpu_scan.load():
        pytest.skip(f"the C++ operators cannot be built here: {cpu_scan.why()}")


@pytest.mark.parametrize("mode,sname", [("E", "sigmoid"), ("E", "atan"), ("F", None)])
@pytest.mark.parametrize("carried", [False, True])
def test_cpu_step_is_one_operator_forward_and_one_backward(built, mode, sname, carried):
    """No other operation, no host read (aten._local_scalar_dense) on the way."""
    y, acc_prev = inputs((4, 33), torch.float32, 0, 0.5, 1.0, 0.5, carried)
    y.requires_grad_(True)
    c = torch.tensor(1.75) if mode == "F" else None
    with Ops() as fwd:
        acc, s = kernels.step(y, acc_prev, lam=0.5, theta=1.0, input_scale=0.5,
                              surrogate=surrogate(sname), mode=mode, c=c)
    outs = [acc] if s is None or s is acc else [acc, s]
    grads = [torch.ones_like(o) for o in outs]
    with Ops() as bwd:
        torch.autograd.backward(outs, grads)
    name = "step" if mode == "E" else "step_f"
    assert fwd.ops == {f"saf_cpu.{name}.default": 1}
    bwd.ops.pop("aten.detach.default", None)  # AccumulateGrad's, into y.grad
    assert bwd.ops == {f"saf_cpu.{'e' if mode == 'E' else 'f'}_backward.default": 1}


def _lif_net(decay_input, dtype):
    import saf_plugin
    from spikingjelly.activation_based import layer, neuron

    torch.manual_seed(0)
    net = torch.nn.Sequential(layer.Linear(16, 32), neuron.LIFNode(tau=2.0, v_reset=None,
                                                                   decay_input=decay_input))
    with torch.no_grad():
        net[0].weight.mul_(4.0)
    return net.to(dtype), saf_plugin


def _steps(net, mode, x, count):
    """Outputs and weight gradients of 4 steps (SAF-E: backward every step; SAF-F: at the
    last); when ``count``, the operations of one step with a state, forward and backward
    (SAF-E: step 2; SAF-F: step 3, the one with a backward)."""
    from spikingjelly.activation_based import functional

    functional.reset_net(net)
    net.zero_grad()
    outs, ops = [], Ops()
    for t in range(4):
        with (ops if count and t == (3 if mode == "F" else 2) else torch.enable_grad()):
            out = net(x[t])
            if mode == "E" or t == 3:
                (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
        outs.append(out.detach())
    return torch.stack(outs), [p.grad.clone() for p in net.parameters()], ops.ops


@pytest.mark.parametrize("mode", ["E", "F"])
@pytest.mark.parametrize("decay_input", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_lif_model_equals_the_oracle_with_fewer_operations(built, monkeypatch, mode,
                                                                  decay_input, dtype):
    """SpikingJelly Linear + LIFNode(v_reset=None) under SAF in step mode 's': the fused step
    ("auto": "cpu") gives the outputs and weight gradients of the oracle (SAF_PLUGIN_NO_CPU_SCAN:
    "torch") bit for bit, in fewer aten operations, none of them the oracle's neuron arithmetic."""
    net, saf_plugin = _lif_net(decay_input, dtype)
    saf_plugin.set_saf(net, mode)
    x = torch.rand(4, 8, 16, dtype=dtype, generator=torch.Generator().manual_seed(1))
    out, grads, ops = _steps(net, mode, x, count=True)
    monkeypatch.setenv("SAF_PLUGIN_NO_CPU_SCAN", "1")
    out_o, grads_o, ops_o = _steps(net, mode, x, count=True)
    assert torch.equal(out, out_o) and 0 < out.mean() < 1
    for g, g_o in zip(grads, grads_o):
        assert torch.equal(g, g_o) and g.abs().sum() > 0
    fused = {"E": ("saf_cpu.step.default", "saf_cpu.e_backward.default"),
             "F": ("saf_cpu.step_f.default", "saf_cpu.f_backward.default")}[mode]
    assert all(ops[f] == 1 for f in fused) and not any(f in ops_o for f in fused)
    assert not {"aten.ge.Scalar", "aten.sigmoid_.default", "aten.clamp.default",
                "aten.minimum.default"} & set(ops)
    assert sum(ops.values()) <= sum(ops_o.values()) - (10 if mode == "E" else 20)


@pytest.mark.slow
def test_torch_compile_fullgraph_inductor_equals_eager(built):
    """A function calling kernels.step ("cpu": SAF-E and SAF-F) compiles with Inductor in one
    graph (fullgraph=True) and gives eager's outputs and gradients."""
    sur = surrogate("sigmoid")
    acc0 = (torch.rand(4, 33, generator=torch.Generator().manual_seed(2)) * 2).round()
    c = torch.tensor(1.75)

    def f(y):
        a, s = kernels.step(y, acc0, lam=0.5, theta=1.0, input_scale=0.5, surrogate=sur)
        b, _ = kernels.step(y * 2, a.detach(), lam=0.5, theta=1.0, surrogate=sur, mode="F", c=c)
        return a * 3 + s + b

    y = torch.randn(4, 33, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True, backend="inductor")(y)
    (g,) = torch.autograd.grad(out.sum(), y)
    out_e = f(y)
    (g_e,) = torch.autograd.grad(out_e.sum(), y)
    assert torch.equal(out, out_e) and torch.equal(g, g_e) and g.abs().sum() > 0


# ----------------------------------------------------------------------------- the interface


def test_every_backend_module_has_the_same_interface():
    names = ("available", "scan", "step")
    reference = {n: inspect.signature(getattr(kernels.torch_scan, n)) for n in names}
    assert set(kernels.MODULES) == {"torch", "cpu", "triton", "cupy"}
    for name, module in kernels.MODULES.items():
        assert kernels.module(name) is module
        for n in names:
            assert inspect.signature(getattr(module, n)) == reference[n], (name, n)
    with pytest.raises(ValueError, match="unknown scan backend"):
        kernels.module("sj2")


def test_step_refuses_an_explicit_backend_that_cannot_run():
    y = torch.zeros(2, 3)
    with pytest.raises(kernels.BackendUnavailableError, match="CUDA"):
        kernels.step(y, None, lam=0.5, theta=1.0, surrogate=surrogate("sigmoid"),
                     backend="triton")
    with pytest.raises(kernels.BackendUnavailableError, match="derivative"):
        kernels.step(y, None, lam=0.5, theta=1.0, surrogate=lambda x: (x >= 0).to(x),
                     backend="cpu")
    with pytest.raises(ValueError, match="mode"):
        kernels.step(y, None, lam=0.5, theta=1.0, surrogate=None, mode="X")
    with pytest.raises(ValueError, match="needs c"):
        kernels.step(y, None, lam=0.5, theta=1.0, surrogate=None, mode="F")


def test_the_cpp_source_ships_and_keys_the_build(monkeypatch, tmp_path):
    """setup.cfg ships saf_cpu.cpp as package data; the build directory's name depends on its
    text, so an edited source is compiled afresh."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = cfg["options.package_data"]["saf_plugin.kernels"].split()
    assert any(fnmatch.fnmatch(cpu_scan.SOURCE.name, p) for p in patterns)
    assert cpu_scan.SOURCE.parent == ROOT / "saf_plugin" / "kernels" and cpu_scan.SOURCE.exists()
    before = cpu_scan._build_dir()
    edited = tmp_path / cpu_scan.SOURCE.name
    edited.write_text(cpu_scan.SOURCE.read_text() + "\n// edited\n")
    monkeypatch.setattr(cpu_scan, "SOURCE", edited)
    assert cpu_scan._build_dir() != before


def test_clamp_rule_is_torchs():
    """SAF-F's fused backwards take the gradient of clamp(Y, min=0) at Y = 0 from torch."""
    y = torch.zeros(3, requires_grad=True)
    (g,) = torch.autograd.grad(core.spike_representation(y, 1.0, 2.0).sum(), y)
    assert kernels.torch_scan.CLAMP_GRAD_AT_ZERO == bool(g[0] == 1)


def test_clamp_rule_is_read_right_when_kernels_are_imported_inside_a_forward():
    """saf_plugin.kernels is first imported in a model's first forward, which may run under
    inference mode, no_grad or a user's modes: the rule is read the same."""
    import subprocess
    import sys

    code = """
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
class F(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))
class D(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))
with torch.inference_mode(), torch.no_grad(), F(), D():
    from saf_plugin.kernels import torch_scan
print(torch_scan.CLAMP_GRAD_AT_ZERO)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == str(kernels.torch_scan.CLAMP_GRAD_AT_ZERO)


# ----------------------------------------------------------------------------- GPU

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("mode,sname", [("E", "sigmoid"), ("E", "atan"), ("F", None)])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("carried", [False, True])
def test_gpu_step_vs_oracle(backend, mode, sname, case, carried):
    """On CUDA: â and s bit for bit; dL/dY bit for bit for "torch", within 1e-5 for "triton"
    (SpikingJelly's Triton surrogate derivative; SAF-F: PyTorch's CUDA division by θ
    multiplies by 1/θ, the kernel divides)."""
    shape, lam, theta, scale = CASES[case]
    y, acc_prev = inputs(shape, torch.float32, case, lam, theta, scale, carried)
    y, acc_prev = y.cuda(), None if acc_prev is None else acc_prev.cuda()
    sur = surrogate(sname)
    ok, why = kernels.available(backend, y, sur, mode)
    if not ok:
        pytest.skip(why)
    (a, s, g, _), (a_o, s_o, g_o, _) = both(backend, y, acc_prev, lam, theta, scale, sur, mode)
    assert torch.equal(a, a_o) and (s is None or torch.equal(s, s_o))
    if backend == "torch":
        assert torch.equal(g, g_o)
    else:
        torch.testing.assert_close(g, g_o, rtol=1e-5, atol=1e-5 * g_o.abs().max().item())
