"""saf_plugin.modes: Mode, a str enum ('E' == Mode.E), the modes set_saf accepts, and SAF-F's one
rule about autograd graphs (keeps_graph), as the training loop and the neuron loop apply it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import saf_plugin
import sj_models as M
from saf_plugin.modes import Mode, keeps_graph


def test_mode_is_a_str_enum():
    assert Mode.E == "E" and Mode.F == "F" and "E" == Mode.E
    assert isinstance(Mode.E, str) and Mode.E != Mode.F and Mode.E != "F"
    assert str(Mode.F) == "F" and f"{Mode.E}" == "E" and "SAF-" + Mode.E == "SAF-E"
    assert Mode("E") is Mode.E and Mode(Mode.F) is Mode.F
    assert {Mode.E: 1}["E"] == 1, "hashes as its string"
    assert [m.value for m in Mode] == ["E", "F"]
    with pytest.raises(ValueError):
        Mode("e")


def _mlp():
    return nn.Sequential(layer.Linear(4, 8), neuron.LIFNode(tau=2.0, v_reset=None),
                         layer.Linear(8, 2))


@pytest.mark.parametrize("mode,expected", [("E", Mode.E), ("F", Mode.F), (Mode.E, Mode.E),
                                           (Mode.F, Mode.F)])
def test_set_saf_accepts_the_strings_and_the_members(mode, expected):
    net = _mlp()
    saf_plugin.set_saf(net, mode)
    got = saf_plugin.saf_mode(net)
    assert got is expected and got == expected.value
    saf_plugin.set_saf(net, None)
    assert saf_plugin.saf_mode(net) is None


@pytest.mark.parametrize("bad", ["e", "f", "X", "", "SAF-E", "EF", 1, True, ("E",)])
def test_set_saf_rejects_every_other_mode(bad):
    net = _mlp()
    classes = [type(m) for m in net.modules()]
    with pytest.raises(ValueError, match="'E', 'F' and None"):
        saf_plugin.set_saf(net, bad)
    assert [type(m) for m in net.modules()] == classes and saf_plugin.saf_mode(net) is None


def test_check_accepts_the_mode_as_a_string_or_a_member():
    net = nn.Sequential(layer.Linear(4, 4), neuron.LIFNode(tau=2.0))  # hard reset: per step
    for mode in ("F", Mode.F):
        assert saf_plugin.check(net, mode=mode)[0].status == "unsupported"
    for mode in ("E", Mode.E):
        assert saf_plugin.check(net, mode=mode)[0].status == "exact"


@pytest.mark.parametrize("steps", [1, 2, 7])
def test_keeps_graph(steps):
    for t in range(steps):
        assert keeps_graph(Mode.E, t, steps) is True and keeps_graph("E", t, steps) is True
        assert keeps_graph(Mode.F, t, steps) is (t == steps - 1)
        assert keeps_graph("F", t, steps) is (t == steps - 1)
    with pytest.raises(ValueError):
        keeps_graph("X", 0, steps)


# ----------------------------------------------------------------------------- the rule, applied


def _firing_mlp(step_mode="s"):
    torch.manual_seed(0)
    net = M.strengthen(M.mlp(), gain=2.0, bias=0.5)
    functional.set_step_mode(net, step_mode)
    return net


class _Recorder:
    """Per call of the model: whether its output has a graph, and how many tensors autograd
    saved for backward during the call."""

    def __init__(self, net):
        self.calls, self.saved = [], 0
        self.spikes = []
        net.register_forward_pre_hook(self.pre)
        net.register_forward_hook(self.post)
        net[2].register_forward_hook(lambda m, i, o: self.spikes.append(o.detach().mean()))

    def pre(self, m, args):
        self.saved = 0

    def post(self, m, args, out):
        self.calls.append((out.grad_fn is not None, self.saved))

    def pack(self, x):
        self.saved += 1
        return x


@pytest.mark.parametrize("mode", ["F", "E"])
def test_train_step_in_step_mode_s_builds_a_graph_where_keeps_graph_says(mode):
    T = 5
    net = _firing_mlp("s")
    saf_plugin.set_saf(net, mode)
    rec = _Recorder(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    x, y = torch.rand(T, 6, 12), torch.randint(0, 5, (6,))
    with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda x: x):
        saf_plugin.train_step(net, x, y, F.cross_entropy, opt)
    assert 0 < float(torch.stack(rec.spikes).mean()) < 1, "the hidden layer fires"
    assert len(rec.calls) == T
    for t, (graph, saved) in enumerate(rec.calls):
        assert graph == keeps_graph(mode, t, T), (t, rec.calls)
        assert (saved > 0) == keeps_graph(mode, t, T), (t, rec.calls)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_saf_f_in_step_mode_m_takes_no_weight_gradient_from_steps_before_the_last():
    """Step mode 'm': the whole sequence in one call; rows 0..T−2 of the output reach no weight
    (the linear maps run them without a graph)."""
    T = 5
    net = _firing_mlp("m")
    saf_plugin.set_saf(net, "F")
    spikes = []
    net[2].register_forward_hook(lambda m, i, o: spikes.append(o.detach()))
    functional.reset_net(net)
    out = net(torch.rand(T, 6, 12))
    assert 0 < float(spikes[0][:-1].mean()) < 1, "the hidden layer fires before the last step"
    weights = [m.weight for m in net.modules() if isinstance(m, nn.Linear)]
    head = torch.autograd.grad(out[:-1].sum(), weights, allow_unused=True,
                               retain_graph=True)
    assert all(g is None or not bool(g.any()) for g in head), head
    last = torch.autograd.grad(out[-1].sum(), weights)
    assert all(bool(g.any()) for g in last)
