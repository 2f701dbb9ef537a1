"""saf_plugin with SpikingJelly 0.0.0.0.14: forward equivalence against its own neurons
(float64 on CPU, every neuron layer firing, both step modes), gradients against the core,
check/fix, step_mode, backend='torch'|'cupy' and functional.set_backend."""

from __future__ import annotations

import copy

import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

import saf_plugin
from saf_plugin import core, kernels, registry


@pytest.fixture
def f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def lif(decay_input=False, tau=2.0, **kw):
    return neuron.LIFNode(tau=tau, decay_input=decay_input, v_reset=None, **kw)


def mlp(kind="lif", decay_input=False, n_in=12, step_mode="s"):
    def n():
        if kind == "if":
            return neuron.IFNode(v_reset=None, step_mode=step_mode)
        if kind == "plif":
            return neuron.ParametricLIFNode(init_tau=2.0, decay_input=decay_input, v_reset=None,
                                            step_mode=step_mode)
        return lif(decay_input, step_mode=step_mode)

    net = nn.Sequential(layer.Flatten(step_mode=step_mode), layer.Linear(n_in, 32, step_mode=step_mode), n(),
                        layer.Linear(32, 24, step_mode=step_mode), n(), layer.Linear(24, 5, step_mode=step_mode))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(1.2 if kind == "if" else 5.0 if decay_input else 2.5)
    return net


def conv(step_mode="s"):
    net = nn.Sequential(
        layer.Conv2d(2, 8, 3, padding=1, step_mode=step_mode), layer.BatchNorm2d(8, step_mode=step_mode),
        lif(step_mode=step_mode), layer.AvgPool2d(2, step_mode=step_mode),
        layer.Conv2d(8, 8, 3, padding=1, step_mode=step_mode), lif(step_mode=step_mode),
        layer.AdaptiveAvgPool2d(2, step_mode=step_mode), layer.Flatten(step_mode=step_mode),
        layer.Linear(32, 5, step_mode=step_mode))
    with torch.no_grad():
        net[1].running_mean.normal_(0, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
        net[1].weight.uniform_(0.8, 1.5)
        net[1].bias.normal_(0.3, 0.2)
        net[0].weight.mul_(3.0)
        net[4].weight.mul_(3.0)
    net.eval()
    return net


def run_native(net, x, step_mode):
    """The model's own outputs [T, ...] and per neuron layer its firing rate."""
    rates = {}
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: rates.setdefault(k, []).append(o.mean()))
             for k, m in enumerate(net.modules()) if isinstance(m, neuron.BaseNode)]
    functional.reset_net(net)
    out = net(x) if step_mode == "m" else torch.stack([net(xt) for xt in x])
    for h in hooks:
        h.remove()
    return out, {k: float(torch.stack(v).mean()) for k, v in rates.items()}


def run_saf(net, x, step_mode):
    functional.reset_net(net)
    return net(x) if step_mode == "m" else torch.stack([net(xt) for xt in x])


def test_the_spikingjelly_adapter_serves_the_legacy_generation():
    assert kernels.spikingjelly_is_legacy()
    registry.load_adapters()
    spec = registry.lookup(lif())
    assert spec is not None and spec.neuron is not None
    assert spec.neuron.saf_class.__module__ == "saf_plugin.adapters.spikingjelly"
    assert spec.neuron.decay(lif()) == 0.5


@pytest.mark.parametrize("step_mode", ["s", "m"])
@pytest.mark.parametrize("kind,decay_input", [("lif", False), ("lif", True), ("if", False),
                                              ("plif", True), ("plif", False)])
def test_forward_equals_spikingjelly(kind, decay_input, step_mode, f64):
    net = mlp(kind, decay_input, step_mode=step_mode)
    x = torch.rand(8, 6, 12) * 1.5
    ref, rates = run_native(net, x, step_mode)
    assert len(rates) == 2 and all(0 < r < 1 for r in rates.values()), rates
    saf_plugin.set_saf(net, "E")
    out = run_saf(net, x, step_mode)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    saf_plugin.set_saf(net, None)
    again, _ = run_native(net, x, step_mode)
    assert torch.equal(again, ref)


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_conv_forward_equals_spikingjelly(step_mode, f64):
    net = conv(step_mode)
    x = torch.rand(6, 4, 2, 8, 8)
    ref, rates = run_native(net, x, step_mode)
    assert len(rates) == 2 and all(0 < r < 1 for r in rates.values()), rates
    saf_plugin.set_saf(net, "E")
    torch.testing.assert_close(run_saf(net, x, step_mode), ref, rtol=0, atol=1e-12)


def core_reference(net, x, lam, theta, mode="E"):
    """An independent SAF-E/-F forward of a Flatten-Linear-LIF-Linear-LIF-Linear MLP written
    with saf_plugin.core only: accumulate, affine with b·c[t], saf_e_step/saf_f_step, exit."""
    lin = [m for m in net if isinstance(m, nn.Linear)]

    def affine(h, m, t):  # Y = W â + b c[t]: SAF-E gives b OTTT's gradient δ, SAF-F the full c[t] δ
        b = m.bias.detach() if mode == "E" else m.bias
        return torch.nn.functional.linear(h, m.weight, m.bias) + (c[t] - 1) * b

    T = x.shape[0]
    c = core.bias_series(0, T, lam, like=x)
    a_x = core.accumulate(x.flatten(2), lam)
    accs = [None, None]
    outs = []
    for t in range(T):
        h = a_x[t]
        for i in range(2):
            y = affine(h, lin[i], t)
            if mode == "E":
                h, _ = core.saf_e_step(y, accs[i], lam, theta, net[2 + 2 * i].surrogate_function)
            else:
                h, _ = core.saf_f_step(y, accs[i], lam, theta, c[t])
            accs[i] = h.detach()
        outs.append(affine(h, lin[2], t))
    O = torch.stack(outs)
    return core.deaccumulate(O, lam) if mode == "E" else O / c.view(-1, 1, 1)


@pytest.mark.parametrize("step_mode", ["s", "m"])
@pytest.mark.parametrize("mode", ["E", "F"])
def test_gradients_equal_the_core(mode, step_mode, f64):
    net = mlp("lif", False, step_mode=step_mode)
    ref_net = copy.deepcopy(net)
    x = torch.rand(6, 5, 12) * 1.5
    saf_plugin.set_saf(net, mode)
    out = run_saf(net, x, step_mode)
    ref = core_reference(ref_net, x, 0.5, 1.0, mode)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    loss = (lambda o: (o[-1] ** 2).sum()) if mode == "F" else (lambda o: (o ** 2).sum())
    loss(out).backward()
    loss(ref).backward()
    for (name, p), q in zip(net.named_parameters(), ref_net.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_plif_decay_gets_a_gradient(f64):
    net = mlp("plif", True, step_mode="m")
    saf_plugin.set_saf(net, "E")
    run_saf(net, torch.rand(5, 3, 12) * 1.5, "m").sum().backward()
    ws = [m.w for m in net if isinstance(m, neuron.ParametricLIFNode)]
    assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in ws)


def test_check_and_fix_hard_reset_and_maxpool():
    net = nn.Sequential(layer.Conv2d(2, 4, 3), neuron.LIFNode(), layer.MaxPool2d(2),
                        layer.Flatten(), layer.Linear(36, 3))
    assert all(f.status == "exact" for f in saf_plugin.check(net))  # hard reset: per step
    bad = {f.path: f.status for f in saf_plugin.check(net, mode="F") if f.status != "exact"}
    assert bad == {"1": "unsupported"}  # SAF-F needs the closed form
    with pytest.raises(saf_plugin.SAFIncompatibleError, match="closed form"):
        saf_plugin.set_saf(net, "F")
    params = list(net.parameters())
    saf_plugin.fix(net, soft_reset=True)
    assert net[1].v_reset is None and isinstance(net[2], layer.AvgPool2d)
    assert all(a is b for a, b in zip(params, net.parameters()))
    saf_plugin.set_saf(net, "E")
    assert saf_plugin.saf_mode(net) == "E"
    assert net(torch.rand(2, 2, 8, 8)).shape == (2, 3)


def test_set_backend_and_step_mode_on_a_converted_model():
    """functional.set_backend/set_step_mode still work after set_saf; backend='cupy' selects
    the CuPy scan, which on CPU raises like SpikingJelly's own 'cupy' does."""
    net = mlp("lif", False)
    functional.set_step_mode(net, "m")
    saf_plugin.set_saf(net, "E")
    try:
        functional.set_backend(net, "cupy", instance=neuron.LIFNode)
    except ImportError:  # no CuPy here: SpikingJelly refuses; set what it would have set
        for m in net:
            if isinstance(m, neuron.LIFNode):
                m._backend = "cupy"
    assert all(m.backend == "cupy" for m in net if isinstance(m, neuron.LIFNode))
    functional.reset_net(net)
    with pytest.raises(kernels.BackendUnavailableError, match="CUDA"):
        net(torch.rand(4, 3, 12))
    functional.set_backend(net, "torch", instance=neuron.LIFNode)
    functional.reset_net(net)
    assert net(torch.rand(4, 3, 12)).shape == (4, 3, 5)
    saf_plugin.set_saf(net, None)
    assert all(m.backend == "torch" and type(m) is neuron.LIFNode for m in net
               if isinstance(m, neuron.LIFNode))
