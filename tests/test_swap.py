"""saf_plugin.swap and saf_plugin.check: set_saf switches a model in place (same module objects,
parameters, state_dict keys, optimizer links, hooks) and back exactly; check reports neurons,
refusals and, with an input, every operation; fix applies the speed options (MaxPool -> AvgPool;
with soft_reset=True hard -> soft reset)."""

from __future__ import annotations

import copy

import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import saf_plugin
import sj_models as M
from sj_models import assert_same, fingerprint
from saf_plugin import SAFIncompatibleError, SAFStateError, core

T, B = 5, 4


def assert_fires(net, fn):
    rates = M.spike_counts(net, fn)
    functional.reset_net(net)
    assert rates and all(0 < r < 1 for r in rates.values()), rates


# ----------------------------------------------------------------------------- set_saf in place


def test_set_saf_keeps_modules_parameters_state_dict_optimizer_and_hooks(float64):
    torch.manual_seed(0)
    net = M.strengthen(M.conv(), gain=2.0, bias=0.5)
    x = torch.rand(T, B, 2, 4, 4)
    assert_fires(net, lambda: M.run(net, x, "s"))
    modules = {n: id(m) for n, m in net.named_modules()}
    params = {n: p for n, p in net.named_parameters()}
    keys = list(net.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    plain_spikes, saf_spikes, pre_calls = [], [], []
    net[2].register_forward_hook(lambda m, i, o: plain_spikes.append(o.detach()))
    net[0].register_forward_pre_hook(lambda m, a: pre_calls.append(1))
    ref = M.run(net, x, "s")
    functional.reset_net(net)

    assert saf_plugin.set_saf(net, "E") is net
    assert {n: id(m) for n, m in net.named_modules()} == modules
    assert all(p is params[n] for n, p in net.named_parameters())
    assert list(net.state_dict()) == keys
    hook = net[2].register_forward_hook(lambda m, i, o: saf_spikes.append(o.detach()))
    n_plain, n_pre = len(plain_spikes), len(pre_calls)
    out = M.run(net, x, "s")
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert len(pre_calls) == n_pre + T, "hooks registered before set_saf still run"
    new = torch.stack(plain_spikes[n_plain:])
    assert torch.equal(new, torch.stack(saf_spikes)) and torch.equal(new, torch.stack(
        plain_spikes[:T])), "a hook on a neuron sees the real 0/1 spikes"

    w0 = net[0].weight.detach().clone()
    functional.reset_net(net)
    opt.zero_grad()
    for xt in x:
        net(xt).pow(2).sum().backward()
    opt.step()  # the optimizer made before set_saf trains the model's own parameters
    assert not torch.equal(net[0].weight, w0)
    trained = {k: v.clone() for k, v in net.state_dict().items()}

    saf_plugin.set_saf(net, None)
    assert {n: id(m) for n, m in net.named_modules()} == modules
    assert all(torch.equal(v, trained[k]) for k, v in net.state_dict().items())
    saf_spikes.clear()
    M.run(net, x, "s")
    assert len(saf_spikes) == T, "a hook registered under SAF stays on the plain model"
    hook.remove()


def test_set_saf_none_restores_every_class_exactly(float64):
    torch.manual_seed(0)
    net = nn.Sequential(layer.WSConv2d(2, 4, 3, padding=1), M.lif(), layer.MaxPool2d(2),
                        layer.Flatten(), layer.Linear(16, 8),
                        neuron.LIFNode(tau=2.0, v_threshold=0.5), layer.Linear(8, 3))
    M.strengthen(net, gain=4.0, bias=0.5)
    x = torch.rand(T, B, 2, 4, 4)
    assert_fires(net, lambda: M.run(net, x, "s"))
    classes = [(n, type(m)) for n, m in net.named_modules()]
    before = fingerprint(net)
    ref = M.run(net, x, "s")
    functional.reset_net(net)
    for _ in range(2):
        saf_plugin.set_saf(net, "E")
        swapped = {n for (n, c), m in zip(classes, net.modules()) if type(m) is not c}
        assert {"", "0", "1", "5"} <= swapped, swapped  # root, method class, two neurons
        torch.testing.assert_close(M.run(net, x, "s"), ref, rtol=0, atol=1e-12)
        functional.reset_net(net)
        saf_plugin.set_saf(net, None)
        assert [(n, type(m)) for n, m in net.named_modules()] == classes
        assert not any(k.startswith("_saf") for m in net.modules() for k in m.__dict__)
        assert_same(fingerprint(net), before)
    assert torch.equal(M.run(net, x, "s"), ref)


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_round_trip_leaves_nothing_behind(float64, step_mode):
    # (moved from test_spikingjelly_api.py)
    net = M.strengthen(M.conv(), gain=2.0, bias=0.5)
    functional.set_step_mode(net, step_mode)
    calls = []
    net[0].register_forward_hook(lambda m, i, o: calls.append(1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.rand(5, 4, 2, 8, 8)
    before, ref = fingerprint(net), M.run(net, x, step_mode)
    keys = list(net.state_dict())

    saf_plugin.set_saf(net, "E")
    assert saf_plugin.saf_mode(net) == "E"
    assert list(net.state_dict()) == keys, "state_dict keys survive the switch"
    assert [id(p) for g in opt.param_groups for p in g["params"]] == before[4]
    n = len(calls)
    M.run(net, x, step_mode)
    assert len(calls) > n, "user hooks still fire under SAF"
    saf_plugin.set_saf(net, "E")  # twice is safe
    saf_plugin.set_saf(net, "F")  # and E -> F
    assert saf_plugin.saf_mode(net) == "F"
    M.run(net, x, step_mode)

    saf_plugin.set_saf(net, None)
    assert saf_plugin.saf_mode(net) is None
    assert_same(fingerprint(net), before)
    assert not any("SAF" in type(m).__name__ for m in net.modules())
    assert torch.equal(M.run(net, x, step_mode), ref)
    saf_plugin.set_saf(net, None)  # reverting a plain model is a no-op


def test_unknown_mode_is_a_value_error(float64):
    # (moved from test_spikingjelly_api.py)
    net = M.mlp()
    before = fingerprint(net)
    with pytest.raises(ValueError, match="'E', 'F' and None"):
        saf_plugin.set_saf(net, "X")
    assert_same(fingerprint(net), before)


def test_nested_set_saf_is_refused(float64):
    # (moved from test_spikingjelly_api.py)
    net = nn.Sequential(M.mlp(), layer.Linear(5, 2))
    saf_plugin.set_saf(net[0], "E")
    with pytest.raises(saf_plugin.SAFStateError, match="already switched to SAF"):
        saf_plugin.set_saf(net, "E")
    with pytest.raises(saf_plugin.SAFStateError, match="already switched to SAF"):
        saf_plugin.set_saf(net[0][1], None)  # a submodule of a SAF model
    saf_plugin.set_saf(net[0], None)
    saf_plugin.set_saf(net, "E")
    assert saf_plugin.saf_mode(net) == "E"


def test_saf_mode_names_the_converted_model_only(float64):
    net = M.mlp()
    saf_plugin.set_saf(net, "F")
    assert saf_plugin.saf_mode(net) == "F"
    assert saf_plugin.saf_mode(net[1]) is None and saf_plugin.saf_mode(net[2]) is None
    with pytest.raises(SAFStateError, match="called on its own"):
        net[2](torch.rand(2, 32))  # a neuron of a SAF model runs only inside the model


# ----------------------------------------------------------------------------- check


def test_check_reports_neurons_and_with_an_input_every_operation(float64):
    # (moved from test_spikingjelly_api.py)
    net = M.residual()
    findings = saf_plugin.check(net)
    paths = [f.path for f in findings]
    assert "2.sn1" in paths and "2.sn2" in paths
    assert all(f.status == "exact" for f in findings), [f.line() for f in findings]
    ops = saf_plugin.check(net, torch.rand(2, 2, 8, 8))
    routes = {f.module: f.reason for f in ops if ":" in f.path}
    assert "runs once per step on accumulations" in routes["conv2d"]
    assert all(f.status == "exact" for f in ops)
    assert saf_plugin.saf_mode(net) is None, "check leaves the model as it was"


def test_check_with_an_input_leaves_the_model_and_its_state_as_they_were(float64):
    torch.manual_seed(0)
    net = M.strengthen(M.mlp(), gain=2.0, bias=0.5)
    x = torch.rand(T, B, 12)
    with torch.no_grad():  # a plain sequence half run: the membranes hold a state
        functional.reset_net(net)
        net(x[0])
    before = fingerprint(net)
    v = [m.v.clone() for m in net.modules() if isinstance(m, neuron.BaseNode)]
    assert all(torch.is_tensor(t) and bool(t.any()) for t in v)
    assert len(saf_plugin.check(net, x[1])) > 2
    assert_same(fingerprint(net), before)
    after = [m.v for m in net.modules() if isinstance(m, neuron.BaseNode)]
    assert all(torch.equal(a, b) for a, b in zip(after, v))


def test_check_with_an_input_right_after_a_plain_forward_with_autograd(float64):
    net = M.mlp()
    x = torch.rand(B, 12)
    functional.reset_net(net)
    net(x)
    assert len(saf_plugin.check(net, x)) > 2


def test_check_refuses_without_neurons_and_with_mixed_step_modes():
    (f,) = saf_plugin.check(nn.Sequential(nn.Linear(2, 2)))
    assert f.status == "unsupported" and "no spiking neuron" in f.reason
    net = nn.Sequential(layer.Linear(2, 2), M.lif(), layer.Linear(2, 2), M.lif(step_mode="m"))
    bad = [f for f in saf_plugin.check(net) if f.status != "exact"]
    assert len(bad) == 1 and "mix step modes" in bad[0].reason
    with pytest.raises(SAFIncompatibleError, match="mix step modes"):
        saf_plugin.set_saf(net, "E")
    assert saf_plugin.saf_mode(net) is None


def test_check_with_an_input_reports_a_run_time_refusal_without_raising(float64):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.sn = layer.Linear(4, 4), layer.Linear(4, 4), M.lif()

        def forward(self, x):
            return self.sn(self.fc2(self.sn(self.fc1(x))))

    findings = saf_plugin.check(Shared(), torch.rand(2, 4))
    assert [f.path for f in findings if f.status == "unsupported"] == ["sn"]


# ----------------------------------------------------------------------------- fix


def test_fix_repairs_maxpool_and_hard_reset(float64):
    # (moved from test_spikingjelly_api.py)
    net = nn.Sequential(layer.Conv2d(2, 4, 3, padding=1), neuron.LIFNode(tau=2.0),
                        layer.MaxPool2d(2), layer.Flatten(), layer.Linear(16, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    assert {c.path for c in saf_plugin.fix(net)} == {"2"}, "the reset changes only on request"
    assert net[1].v_reset == 0.0
    changes = saf_plugin.fix(net, soft_reset=True)
    assert {c.path for c in changes} == {"1"}
    assert isinstance(net[2], layer.AvgPool2d) and net[2].kernel_size == 2
    assert net[1].v_reset is None
    assert [p for g in opt.param_groups for p in g["params"]] == list(net.parameters())
    assert all(f.status == "exact" for f in saf_plugin.check(net))
    assert all("on accumulations" in f.reason for f in saf_plugin.check(net, torch.rand(2, 2, 4, 4))
               if ":" in f.path), "average pooling runs on accumulations"
    saf_plugin.set_saf(net, "E")
    functional.reset_net(net)
    net(torch.rand(2, 2, 4, 4))


def _hard_maxpool():
    torch.manual_seed(0)
    net = nn.Sequential(layer.Conv2d(2, 4, 3, padding=1), neuron.LIFNode(tau=2.0),
                        nn.MaxPool2d(2), layer.Flatten(), layer.Linear(16, 8),
                        neuron.LIFNode(tau=2.0, v_threshold=0.5), layer.Linear(8, 3))
    return M.strengthen(net, gain=4.0, bias=0.5)


def test_fix_versus_fix_soft_reset(float64):
    net, x = _hard_maxpool(), torch.rand(T, B, 2, 4, 4)
    neurons = [net[1], net[5]]
    routes = lambda: [f.reason.split(":")[0] for f in saf_plugin.check(net)]  # noqa: E731
    assert routes() == ["per step", "per step"]
    assert all(f.status == "unsupported" for f in saf_plugin.check(net, mode="F"))

    changes = saf_plugin.fix(net)  # the speed option only: MaxPool -> AvgPool
    assert [(c.path, c.status) for c in changes] == [("2", "exact")]
    assert type(net[2]) is nn.AvgPool2d and net[2].count_include_pad is False
    assert [n.v_reset for n in neurons] == [0.0, 0.0] and routes() == ["per step", "per step"]
    assert_fires(net, lambda: M.run(net, x, "s"))
    ref = M.run(net, x, "s")
    functional.reset_net(net)
    saf = saf_plugin.set_saf(copy.deepcopy(net), "E")  # exact with the hard reset, per step
    torch.testing.assert_close(M.run(saf, x, "s"), ref, rtol=0, atol=1e-12)
    with pytest.raises(SAFIncompatibleError):
        saf_plugin.set_saf(copy.deepcopy(net), "F")

    changes = saf_plugin.fix(net, soft_reset=True)  # the neurons too (a different model)
    assert [c.path for c in changes] == ["1", "5"] and all(n.v_reset is None for n in neurons)
    assert routes() == ["closed form", "closed form"]
    assert saf_plugin.fix(net, soft_reset=True) == [], "nothing left to fix"
    assert_fires(net, lambda: M.run(net, x, "s"))
    soft = M.run(net, x, "s")
    functional.reset_net(net)
    assert not torch.equal(soft, ref), "the soft reset changes the model"
    saf = saf_plugin.set_saf(copy.deepcopy(net), "E")
    torch.testing.assert_close(M.run(saf, x, "s"), soft, rtol=0, atol=1e-12)
    saf = saf_plugin.set_saf(copy.deepcopy(net), "F")  # now SAF-F runs it: O[t]/c[t]
    c = core.bias_series(0, T, 0.5, like=soft).view(-1, 1, 1)
    torch.testing.assert_close(M.run(saf, x, "s"), core.accumulate(soft, 0.5) / c, rtol=0,
                               atol=1e-12)


def test_fix_keeps_the_training_mode_and_reports_what_it_cannot_replace():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), M.lif(), nn.MaxPool2d(2, dilation=2),
                        layer.MaxPool2d(2)).eval()
    changes = saf_plugin.fix(net)
    assert [(c.path, c.status) for c in changes] == [("2", "unsupported"), ("3", "exact")]
    assert "dilation" in changes[0].reason
    assert type(net[2]) is nn.MaxPool2d and type(net[3]) is layer.AvgPool2d
    assert not net[3].training and net[3].step_mode == "s"


def test_fix_on_a_converted_model_is_refused(float64):
    net = _hard_maxpool()
    saf_plugin.set_saf(net, "E")
    with pytest.raises(SAFStateError, match="set_saf\\(model, None\\)"):
        saf_plugin.fix(net)
    assert type(net[2]) is nn.MaxPool2d
