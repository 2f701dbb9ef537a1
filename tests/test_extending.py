"""The public extension API, used as a user would, from outside the package (each test's
registrations are undone after it: ``restore_registry``): a user's own
neuron (a plain nn.Module with a hard reset; a SpikingJelly MemoryModule given its LIF
parameters), a user's per-step module and a user's linear map. Outputs equal the plain model's in
float64; the plain neuron's SAF-E gradient equals the detached-state + trace reference."""

from __future__ import annotations

import copy

import pytest
import torch
from spikingjelly.activation_based import base, functional, layer, neuron, surrogate
from torch import nn

import saf_plugin
from corpus_harness import calibrate, run
from references import MatMul, Spike, TraceLinear

T, B = 6, 3


class MyLIF(nn.Module):
    """A hand-written LIF with a hard reset, state in ``self.v`` (None after ``reset()``)."""

    def __init__(self, tau=2.0, v_threshold=1.0):
        super().__init__()
        self.tau, self.v_threshold, self.v = tau, v_threshold, None

    def reset(self):
        self.v = None

    def forward(self, x):
        v = torch.zeros_like(x) if self.v is None else self.v
        v = v + (x - v) / self.tau
        s = Spike.apply(v - self.v_threshold)
        self.v = v * (1 - s)
        return s


@pytest.fixture
def my_lif(restore_registry):
    saf_plugin.register_neuron(MyLIF, decay=lambda m: 1 - 1 / m.tau, state=("v",))


def my_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), MyLIF(), nn.Linear(16, 6), MyLIF()).double()
    x = torch.rand(T, B, 8, dtype=torch.float64) * 2
    for m, theta in ((net[1], 0.35), (net[3], 0.2)):
        m.v_threshold = theta
    return net, x


def run_plain(net, x):
    for m in net.modules():
        if isinstance(m, MyLIF):
            m.reset()
    return torch.stack([net(xt) for xt in x])


def test_a_users_neuron_runs_per_step_exactly_over_two_sequences(my_lif):
    net, x = my_net()
    ref = run_plain(net, x)
    rates = [float(o.mean()) for o in (ref,)]
    assert 0 < rates[0] < 1
    hidden = []
    h = net[1].register_forward_hook(lambda m, i, o: hidden.append(o))
    run_plain(net, x)
    h.remove()
    assert 0 < float(torch.stack(hidden).mean()) < 1, "the hidden layer fires"
    findings = saf_plugin.check(net)
    assert [f.reason.startswith("per step") for f in findings] == [True, True]
    net[1].reset(), net[3].reset()  # (a plain model holding a graph cannot be deep-copied)
    saf = saf_plugin.set_saf(copy.deepcopy(net), "E")
    for _ in range(2):  # the user's reset (v = None) starts a new sequence
        got = run_plain(saf, x)
        assert torch.allclose(got, ref, rtol=0, atol=1e-9)
    with pytest.raises(saf_plugin.SAFIncompatibleError, match="closed form"):
        saf_plugin.set_saf(copy.deepcopy(net), "F")


def test_a_users_neuron_gets_ottts_gradient(my_lif):
    net, x = my_net()
    r = torch.randn(T, B, 6, dtype=torch.float64)
    lin1, n1, lin2, n2 = net
    n1.reset(), n2.reset()
    tr0 = tr1 = None
    for t in range(T):
        for n in (n1, n2):
            n.v = None if n.v is None else n.v.detach()
        tr0 = x[t] if tr0 is None else 0.5 * tr0 + x[t]
        s1 = n1(TraceLinear.apply(x[t], tr0, lin1.weight, lin1.bias))
        tr1 = s1.detach() if tr1 is None else 0.5 * tr1 + s1.detach()
        (n2(TraceLinear.apply(s1, tr1, lin2.weight, lin2.bias)) * r[t]).sum().backward()
    ref = {k: p.grad.clone() for k, p in net.named_parameters()}
    n1.reset(), n2.reset()
    net.zero_grad()
    saf = saf_plugin.set_saf(copy.deepcopy(net), "E")
    saf.zero_grad()
    for t in range(T):
        (saf(x[t]) * r[t]).sum().backward()
    for k, p in saf.named_parameters():
        scale = float(ref[k].abs().max())
        assert scale > 0 and torch.allclose(p.grad, ref[k], rtol=1e-9, atol=1e-9 * scale), k


class MySoftLIF(base.MemoryModule):
    """A SpikingJelly memory module implementing a soft-reset LIF (decay_input=False)."""

    def __init__(self, tau=2.0, v_threshold=1.0):
        super().__init__()
        self.tau, self.v_threshold = tau, v_threshold
        self.surrogate_function = surrogate.Sigmoid()
        self.register_memory("v", 0.0)

    def forward(self, x):
        v = self.v * (1 - 1 / self.tau) + x
        s = self.surrogate_function(v - self.v_threshold)
        self.v = v - s * self.v_threshold
        return s


def two_memory_modules(cls, theta1: float, theta2: float):
    """Linear–cls–Linear–cls in float64, its input [T, B, 8] and the plain run's output; both
    neuron layers fire."""
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(8, 16), cls(v_threshold=theta1), layer.Linear(16, 6),
                        cls(v_threshold=theta2)).double()
    x = torch.rand(T, B, 8, dtype=torch.float64) * 2
    hidden = []
    net[1].register_forward_hook(lambda m, i, o: hidden.append(o.detach()))
    ref = run(net, x, "s")
    assert 0 < float(ref.mean()) < 1 and 0 < float(torch.stack(hidden).mean()) < 1
    functional.reset_net(net)
    return net, x, ref


@pytest.mark.parametrize("mode", ["E", "F"])
def test_a_users_memory_module_runs_the_closed_form(mode, restore_registry):
    saf_plugin.register_neuron(MySoftLIF, decay=lambda m: 1 - 1 / m.tau, lif=lambda m: dict(
        decay=1 - 1 / m.tau, threshold=m.v_threshold, surrogate=m.surrogate_function))
    net, x, ref = two_memory_modules(MySoftLIF, 0.4, 0.15)
    assert saf_plugin.check(net)[0].reason.startswith("closed form")
    saf = saf_plugin.set_saf(copy.deepcopy(net), mode)
    got = run(saf, x, "s")
    if mode == "F":  # the spike representation of the plain spikes
        acc, c, rs = torch.zeros_like(ref[0]), 0.0, []
        for t in range(T):
            acc, c = 0.5 * acc + ref[t], 0.5 * c + 1
            rs.append(acc / c)
        ref = torch.stack(rs)
    assert torch.allclose(got, ref, rtol=0, atol=1e-9)


class Clamp(torch.autograd.Function):
    """A custom autograd function SAF cannot see into."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(0, 1)

    @staticmethod
    def backward(ctx, grad):
        return grad


class ClampLayer(nn.Module):
    def forward(self, x):
        return Clamp.apply(x) * float(x.abs().max().item() > -1)  # .item(): per step


def test_a_users_per_step_module(restore_registry):
    saf_plugin.register_per_step(ClampLayer)
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(8, 16), ClampLayer(), layer.Linear(16, 16),
                        neuron.LIFNode(tau=2.0), layer.Linear(16, 6)).double()
    x = torch.rand(T, B, 8, dtype=torch.float64) * 2 - 0.5
    calibrate(net, lambda: run(net, x[:1], "s"))
    ref = run(net, x, "s")
    functional.reset_net(net)
    saf = saf_plugin.set_saf(copy.deepcopy(net), "E")
    assert torch.allclose(run(saf, x, "s"), ref, rtol=0, atol=1e-9)
    routes = {f.module: f.reason for f in saf_plugin.check(net, x[0]) if "(in module" in f.path}
    assert "per step" in routes["ClampLayer"], routes


class ScaledLinear(nn.Module):
    """A user's linear map through a custom autograd function, with a bias."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 16) / 4)
        self.bias = nn.Parameter(torch.randn(6))

    def forward(self, x):
        return MatMul.apply(x, self.weight) + self.bias


def test_a_users_linear_map_runs_on_accumulations(restore_registry):
    saf_plugin.register_linear(ScaledLinear, shift=lambda m, out, nd: m.bias)
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(8, 16), neuron.LIFNode(tau=2.0, v_reset=None),
                        ScaledLinear(), neuron.LIFNode(tau=2.0, v_reset=None)).double()
    x = torch.rand(T, B, 8, dtype=torch.float64) * 2
    calibrate(net, lambda: run(net, x[:1], "s"))
    ref = run(net, x, "s")
    assert 0 < float(ref.mean()) < 1
    functional.reset_net(net)
    saf = saf_plugin.set_saf(copy.deepcopy(net), "E")
    assert torch.allclose(run(saf, x, "s"), ref, rtol=0, atol=1e-9)
    routes = {f.module: f.reason for f in saf_plugin.check(net, x[0]) if "(in module" in f.path}
    assert "on accumulations" in routes["ScaledLinear"], routes


def test_a_users_snntorch_neuron_subclass_runs_per_step(restore_registry):
    snn = pytest.importorskip("snntorch")

    class MyLeaky(snn.Leaky):  # overrides the dynamics: not covered by snn.Leaky's entry
        def _base_state_function(self, input_):
            return self.beta.clamp(0, 1) * self.mem + 1.5 * input_

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), MyLeaky(0.8, init_hidden=True, threshold=0.6),
                             nn.Linear(16, 4), MyLeaky(0.8, init_hidden=True, threshold=0.3))

    assert saf_plugin.check(build())[0].status == "unsupported"
    saf_plugin.register_neuron(MyLeaky, decay=lambda m: float(m.beta))
    net, x = build(), torch.rand(T, B, 8) * 2
    saf = copy.deepcopy(net)
    ref = run(net, x, "s")
    assert 0 < float(ref.mean()) < 1
    saf_plugin.set_saf(saf, "E")
    for _ in range(2):
        assert torch.equal(run(saf, x, "s"), ref)


class MyHardLIF(base.MemoryModule):
    """A SpikingJelly memory module (not a BaseNode) with a hard reset, overriding forward."""

    def __init__(self, tau=2.0, v_threshold=1.0):
        super().__init__()
        self.tau, self.v_threshold = tau, v_threshold
        self.register_memory("v", 0.0)

    def forward(self, x):
        v = self.v + (x - self.v) / self.tau
        s = Spike.apply(v - self.v_threshold)
        self.v = v * (1 - s)
        return s


def test_a_users_memory_module_runs_per_step(restore_registry):
    saf_plugin.register_neuron(MyHardLIF, decay=lambda m: 1 - 1 / m.tau)
    net, x, ref = two_memory_modules(MyHardLIF, 0.35, 0.2)
    assert saf_plugin.check(net)[0].reason.startswith("per step")
    saf = saf_plugin.set_saf(copy.deepcopy(net), "E")
    for _ in range(2):  # reset_net starts each sequence
        assert torch.allclose(run(saf, x, "s"), ref, rtol=0, atol=1e-9)
