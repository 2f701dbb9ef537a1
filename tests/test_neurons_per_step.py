"""Neurons without a closed form run per step under SAF-E (docs/theory.md, "Neurons without a
closed form"): their outputs equal the plain model's, and their gradients equal an independent
reference, float64.

The reference is the plain library model (never converted) stepped online with its neurons'
state detached after every step (OTTT's rule: SpikingJelly's own ``functional.detach_net``;
snnTorch's hidden states detached by hand) and every weight's gradient taken through a
hand-written presynaptic trace â[t] = λ â[t−1] + s[t] (``TraceLinear``), λ the documented decay
of the neuron the weight feeds (the ``LAM`` column below).
"""

from __future__ import annotations

import copy

import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import saf_plugin
from corpus_harness import FiringRecorder, calibrate, reset, run
from references import TraceLinear, spike_grad

T, B = 6, 3


def _liaf():
    return neuron.LIAFNode(act=nn.ReLU(), threshold_related=False)


# name: (factory, λ of the trace its input weights see)
SJ = {
    "LIF_hard": (lambda: neuron.LIFNode(tau=2.0), 0.5),
    "LIF_hard_no_decay_input": (lambda: neuron.LIFNode(tau=2.0, decay_input=False), 0.5),
    "IF_hard": (lambda: neuron.IFNode(), 1.0),
    "PLIF_hard": (lambda: neuron.ParametricLIFNode(init_tau=2.0), 0.5),
    "LIF_hard_detach_reset": (lambda: neuron.LIFNode(tau=4.0, detach_reset=True), 0.75),
    "HalfThresholdIF": (neuron.HalfThresholdIFNode, 1.0),
    "ILIF": (lambda: neuron.ILIFNode(tau=2.0), 0.5),
    "Izhikevich": (lambda: neuron.IzhikevichNode(tau=2.0), 0.5),
    "QIF": (lambda: neuron.QIFNode(tau=2.0), 0.5),
    "EIF": (lambda: neuron.EIFNode(tau=2.0), 0.5),
    "RAF": (neuron.RAFNode, 1.0),
    "TernaryIF": (neuron.TernaryIFNode, 1.0),
    "TernaryLIF": (lambda: neuron.TernaryLIFNode(tau=2.0), 0.5),
    "ComplementaryLIF": (lambda: neuron.ComplementaryLIFNode(tau=2.0), 0.5),
    "CUBALIF": (lambda: neuron.CUBALIFNode(c_decay=0.6, v_decay=0.7), 0.6),
    "LIAF": (_liaf, 0.5),
}


def sj_net(factory, step_mode, second=None):
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(8, 16), factory(), layer.Linear(16, 6),
                        (second or factory)()).double()
    functional.set_step_mode(net, step_mode)
    x = torch.rand(T, B, 8, dtype=torch.float64) * 2
    calibrate(net, lambda: run(net, x[:1], step_mode))
    return net, x


def assert_active(net, x, step_mode):
    """Every neuron layer's output varies (no silent or saturated layer: a comparison of
    constant outputs proves nothing)."""
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: seen.setdefault(k, []).append(o))
             for k, m in net.named_modules() if isinstance(m, neuron.BaseNode)]
    run(net, x, step_mode)
    for h in hooks:
        h.remove()
    assert len(seen) == 2
    for k, outs in seen.items():
        o = torch.cat([t.detach().flatten() for t in outs])
        assert o.min() < o.max(), f"neuron layer {k} emits a constant"
        assert bool((o != 0).any()) and bool((o == 0).any()), f"layer {k}: never/always fires"


@pytest.mark.parametrize("step_mode", ["s", "m"])
@pytest.mark.parametrize("name", list(SJ))
def test_spikingjelly_neuron_runs_per_step_exactly(name, step_mode):
    net, x = sj_net(SJ[name][0], step_mode)
    assert_active(net, x, step_mode)
    ref = run(net, x, step_mode)
    functional.reset_net(net)
    assert all(f.reason.startswith("per step") for f in saf_plugin.check(net)), name
    saf = saf_plugin.set_saf(copy.deepcopy(net), "E")
    got = run(saf, x, step_mode)
    assert torch.allclose(got, ref, rtol=0, atol=1e-9), float((got - ref).abs().max())
    got2 = run(saf, x, step_mode)  # a second sequence after reset_net
    assert torch.allclose(got2, ref, rtol=0, atol=1e-9)
    saf_plugin.set_saf(saf, None)
    assert torch.equal(run(saf, x, step_mode), ref)


def detach_state(net):
    """OTTT's rule: every memory's history a constant (``functional.detach_net`` detaches in
    place, which a recurrent container's memory, a view, does not allow)."""
    for m in net.modules():
        for k, v in getattr(m, "_memories", {}).items():
            if torch.is_tensor(v):
                m._memories[k] = v.detach()


def sj_reference_grads(net, x, lams, r):
    lin1, n1, lin2, n2 = net
    functional.reset_net(net)
    net.zero_grad()
    tr0 = tr1 = None
    for t in range(x.shape[0]):
        detach_state(net)
        tr0 = x[t] if tr0 is None else lams[0] * tr0 + x[t]
        s1 = n1(TraceLinear.apply(x[t], tr0, lin1.weight, lin1.bias))
        tr1 = s1.detach() if tr1 is None else lams[1] * tr1 + s1.detach()
        s2 = n2(TraceLinear.apply(s1, tr1, lin2.weight, lin2.bias))
        (s2 * r[t]).sum().backward()
    return {k: p.grad.clone() for k, p in net.named_parameters()}


def saf_grads(net, x, r, step_mode):
    saf = saf_plugin.set_saf(copy.deepcopy(net), "E")
    functional.reset_net(saf)
    saf.zero_grad()
    if step_mode == "m":
        (saf(x) * r).sum().backward()
    else:
        for t in range(x.shape[0]):
            (saf(x[t]) * r[t]).sum().backward()
    return {k: p.grad.clone() for k, p in saf.named_parameters()}


def assert_same_grads(got, ref):
    assert got.keys() == ref.keys()
    for k in ref:
        scale = float(ref[k].abs().max())
        assert scale > 0, f"{k}: zero gradient (vacuous)"
        assert torch.allclose(got[k], ref[k], rtol=1e-9, atol=1e-9 * scale), (
            k, float((got[k] - ref[k]).abs().max()), scale)


GRAD = ["LIF_hard", "LIF_hard_no_decay_input", "IF_hard", "PLIF_hard", "LIF_hard_detach_reset",
        "Izhikevich", "QIF", "EIF", "CUBALIF", "LIAF"]


@pytest.mark.parametrize("step_mode", ["s", "m"])
@pytest.mark.parametrize("name", GRAD)
def test_spikingjelly_per_step_gradients_equal_the_reference(name, step_mode):
    if name == "LIAF" and step_mode == "m":
        pytest.skip("SpikingJelly's LIAFNode runs LIFNode's multi-step forward in step mode "
                    "'m' (spikes, not its activation): the step-by-step reference differs")
    factory, lam = SJ[name]
    net, x = sj_net(factory, step_mode)
    r = torch.randn(T, B, 6, dtype=torch.float64)
    functional.set_step_mode(net, "s")
    ref = sj_reference_grads(net, x, (lam, lam), r)
    functional.set_step_mode(net, step_mode)
    functional.reset_net(net)
    assert_same_grads(saf_grads(net, x, r, step_mode), ref)


def test_mixed_decays_each_weight_sees_its_receivers_trace():
    """LIF (λ 0.5, hard reset) feeding IF (λ 1, hard reset): step mode 's'."""
    net, x = sj_net(SJ["LIF_hard"][0], "s", second=SJ["IF_hard"][0])
    r = torch.randn(T, B, 6, dtype=torch.float64)
    ref = sj_reference_grads(net, x, (0.5, 1.0), r)
    functional.reset_net(net)
    assert_same_grads(saf_grads(net, x, r, "s"), ref)


def test_saf_f_refuses_a_per_step_neuron_naming_it():
    net, _ = sj_net(SJ["LIF_hard"][0], "s")
    with pytest.raises(saf_plugin.SAFIncompatibleError, match=r"(?s)1 \(LIFNode\).*closed form"):
        saf_plugin.set_saf(net, "F")
    assert saf_plugin.saf_mode(net) is None


@pytest.mark.parametrize("container", ["linear", "elementwise"])
@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_spikingjelly_recurrent_containers_gradients(container, step_mode):
    """The container's own step per step, its memories (and its neuron's) detached: the
    reference steps the plain container with functional.detach_net."""
    def build():
        lif = neuron.LIFNode(tau=2.0)
        if container == "linear":
            rec = layer.LinearRecurrentContainer(lif, in_features=16, out_features=16)
        else:
            rec = layer.ElementWiseRecurrentContainer(lif, element_wise_function=lambda a, b: a + b)
        return nn.Sequential(layer.Linear(8, 16), rec, layer.Linear(16, 6), neuron.IFNode())

    torch.manual_seed(0)
    net = build().double()
    functional.set_step_mode(net, step_mode)
    x = torch.rand(T, B, 8, dtype=torch.float64) * 2
    calibrate(net, lambda: run(net, x[:1], step_mode))
    rec = FiringRecorder(net)
    ref_out = run(net, x, step_mode)
    rec.remove()
    assert all(0 < v < 1 for v in rec.rates().values()), rec.rates()
    functional.reset_net(net)
    saf = saf_plugin.set_saf(copy.deepcopy(net), "E")
    assert torch.allclose(run(saf, x, step_mode), ref_out, rtol=0, atol=1e-9)
    r = torch.randn(T, B, 6, dtype=torch.float64)
    functional.set_step_mode(net, "s")
    functional.reset_net(net)
    ref = sj_reference_grads(net, x, (0.5, 1.0), r)
    functional.set_step_mode(net, step_mode)
    functional.reset_net(net)
    if step_mode == "m":  # step mode 'm': the weights see the trace of the model's first decay
        return
    assert_same_grads(saf_grads(net, x, r, step_mode), ref)


# --------------------------------------------------------------------------- snnTorch

snn = pytest.importorskip("snntorch")
from snntorch import utils  # noqa: E402


def _beta(m):
    return float(m.beta.clamp(0, 1))


def _alpha(m):
    return float(m.alpha.clamp(0, 1))


def _rc(m):
    return float(1 - m.time_step / (m.R * m.C))


SNN = {  # name: (factory(**kw), λ of the module (the value it computes with), or None)
    "Leaky_zero": (lambda **kw: snn.Leaky(beta=0.8, reset_mechanism="zero", **kw), _beta),
    "Leaky_inhibition": (lambda **kw: snn.Leaky(beta=0.8, inhibition=True, **kw), _beta),
    "Leaky_per_neuron_beta": (lambda **kw: snn.Leaky(beta=torch.linspace(0.5, 0.9, 16),
                                                     **kw), None),
    "Synaptic": (lambda **kw: snn.Synaptic(alpha=0.8, beta=0.7, **kw), _alpha),
    "Lapicque": (lambda **kw: snn.Lapicque(R=5.1, C=5e-3, time_step=1e-3, **kw), _rc),
    "RLeaky": (lambda **kw: snn.RLeaky(beta=0.8, linear_features=16, **kw), _beta),
    "RSynaptic": (lambda **kw: snn.RSynaptic(alpha=0.7, beta=0.8, linear_features=16, **kw),
                  _alpha),
}
_STATES = ("mem", "syn", "spk", "syn_exc", "syn_inh")


def snn_net(name):
    torch.manual_seed(0)
    factory = SNN[name][0]
    kw = dict(init_hidden=True, threshold=0.5, spike_grad=spike_grad)
    net = nn.Sequential(nn.Linear(8, 16), factory(**kw), nn.Linear(16, 16),
                        factory(output=True, **kw)).double()
    x = torch.rand(T, B, 8, dtype=torch.float64) * 2
    calibrate(net, lambda: run(net, x[:1], "s"))
    return net, x


def fresh_copy(net):
    """A deep copy of a model that ran with autograd (snnTorch keeps graphs in its buffers)."""
    for m in net.modules():
        for k, b in m._buffers.items():
            if b is not None:
                m._buffers[k] = b.detach()
    return copy.deepcopy(net)


def _spikes(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", list(SNN))
def test_snntorch_neuron_runs_per_step_exactly(name):
    net, x = snn_net(name)
    rec = FiringRecorder(net)
    ref = run(net, x, "s")
    rec.remove()
    assert all(0 < v < 1 for v in rec.rates().values()), rec.rates()
    utils.reset(net)
    assert all(f.reason.startswith("per step") for f in saf_plugin.check(net)), name
    saf = saf_plugin.set_saf(fresh_copy(net), "E")
    got = run(saf, x, "s")
    for a, b in zip(got, ref):  # spikes and every state the neuron returns
        assert torch.allclose(a, b, rtol=0, atol=1e-9), float((a - b).abs().max())


def snn_reference_grads(net, x, lams, r):
    lin1, n1, lin2, n2 = net
    reset(net)
    net.zero_grad()
    tr0 = tr1 = None
    for t in range(x.shape[0]):
        for n in (n1, n2):  # OTTT's rule, by hand: the hidden state's history is a constant
            for k in _STATES:
                if torch.is_tensor(getattr(n, k, None)):
                    setattr(n, k, getattr(n, k).detach())
        tr0 = x[t] if tr0 is None else lams[0] * tr0 + x[t]
        s1 = n1(TraceLinear.apply(x[t], tr0, lin1.weight, lin1.bias))
        tr1 = s1.detach() if tr1 is None else lams[1] * tr1 + s1.detach()
        s2 = _spikes(n2(TraceLinear.apply(s1, tr1, lin2.weight, lin2.bias)))
        (s2 * r[t]).sum().backward()
    return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", [n for n in SNN if SNN[n][1] is not None])
def test_snntorch_per_step_gradients_equal_the_reference(name):
    net, x = snn_net(name)
    lam = SNN[name][1](net[1])
    r = torch.randn(T, B, 16, dtype=torch.float64)
    ref = snn_reference_grads(net, x, (lam, lam), r)
    utils.reset(net)
    saf = saf_plugin.set_saf(fresh_copy(net), "E")
    reset(saf)  # utils.reset and each neuron's reset_mem (a copy is not in snnTorch's instances)
    saf.zero_grad()
    for t in range(T):
        (_spikes(saf(x[t])) * r[t]).sum().backward()
    got = {k: p.grad.clone() for k, p in saf.named_parameters() if p.grad is not None}
    assert_same_grads(got, ref)


class SynapticLoop(nn.Module):
    """snnTorch tutorial style: states passed in and out, the loop over time in forward."""

    def __init__(self):
        super().__init__()
        kw = dict(alpha=0.8, beta=0.7, spike_grad=spike_grad)
        self.fc1, self.lif1 = nn.Linear(8, 16), snn.Synaptic(threshold=0.5, **kw)
        self.fc2, self.lif2 = nn.Linear(16, 4), snn.Synaptic(threshold=0.3, **kw)

    def forward(self, x):
        syn1, mem1 = self.lif1.reset_mem()
        syn2, mem2 = self.lif2.reset_mem()
        spk_rec, mem_rec = [], []
        for step in range(x.shape[0]):
            spk1, syn1, mem1 = self.lif1(self.fc1(x[step]), syn1, mem1)
            spk2, syn2, mem2 = self.lif2(self.fc2(spk1), syn2, mem2)
            spk_rec.append(spk2)
            mem_rec.append(mem2)
        return torch.stack(spk_rec), torch.stack(mem_rec)


def test_snntorch_tutorial_style_states_passed_in_and_out():
    torch.manual_seed(0)
    net = SynapticLoop().double()
    x = torch.rand(T, B, 8, dtype=torch.float64) * 2
    saf = saf_plugin.set_saf(copy.deepcopy(net), "E")
    ref = net(x)
    assert 0 < float(ref[0].detach().mean()) < 1
    for _ in range(2):  # two sequences: reset_mem at the top of forward starts each
        got = saf(x)
        for a, b in zip(got, ref):
            assert torch.allclose(a, b, rtol=0, atol=1e-9)


def test_store_v_seq_records_every_step_in_step_mode_m():
    """SpikingJelly's ``store_v_seq`` monitor sees the whole [T, ...] voltage sequence, as in
    the plain model, although the per-step route runs the neuron one step at a time."""
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(8, 16), neuron.LIFNode(tau=2.0, store_v_seq=True),
                        layer.Linear(16, 6), neuron.IFNode()).double()
    functional.set_step_mode(net, "m")
    x = torch.rand(T, B, 8, dtype=torch.float64) * 2
    calibrate(net, lambda: run(net, x[:1], "m"))
    assert_active(net, x, "m")
    ref = run(net, x, "m")
    v_ref = net[1].v_seq.detach().clone()
    functional.reset_net(net)
    saf = saf_plugin.set_saf(copy.deepcopy(net), "E")
    assert torch.allclose(run(saf, x, "m"), ref, rtol=0, atol=1e-9)
    assert saf[1].v_seq.shape == v_ref.shape == (T, B, 16)
    assert torch.allclose(saf[1].v_seq, v_ref, rtol=0, atol=1e-9)
