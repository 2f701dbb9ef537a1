"""State reads are the plain model's: under SAF a closed-form SpikingJelly neuron
(``LIFNode(v_reset=None)``: soft reset) does not need its membrane, but whatever reads it must
see the plain model's values:

- ``lif.v`` after a step (a tensor, within 1e-12 of the plain one; fe87f08 left the float 0.0);
- ``v_seq`` with ``store_v_seq=True`` in step mode 'm' (fe87f08: None);
- ``monitor.AttributeMonitor('v', pre_forward=False)`` (fe87f08 recorded 0.0);
- ``monitor.InputMonitor`` and forward pre-hooks on neurons: the plain input currents
  (fe87f08 showed them accumulations);
- a forward that returns a neuron's ``.v``: the plain tensor, with a gradient (fe87f08: a float).

Both step modes, ``decay_input`` True and False; SAF-E, and SAF-F for the forward values (its
outputs are spike representations, but the membrane a neuron holds is the plain one). float64,
every neuron layer firing.
"""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional, layer, monitor, neuron
from torch import nn

import saf_plugin
from exactness import plain_with_rates, ready, reset

T, B = 5, 3
ATOL = 1e-12
STEP_MODES = ["s", "m"]
DECAY_INPUT = [pytest.param(False, id="decay_input=False"),
               pytest.param(True, id="decay_input=True")]


def lif(decay_input, **kw):
    return neuron.LIFNode(tau=2.0, decay_input=decay_input, v_reset=None, **kw)


def chain(step_mode, decay_input, store_v_seq=False):
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(6, 8), lif(decay_input, store_v_seq=store_v_seq),
                        layer.Linear(8, 8), lif(decay_input, store_v_seq=store_v_seq),
                        layer.Linear(8, 3)).double()
    functional.set_step_mode(net, step_mode)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(T, B, 6, generator=g, dtype=torch.float64) * 2
    ready(net, x, step_mode)
    plain_with_rates(net, x, step_mode)  # every neuron layer fires
    return net, x


def calls(net, x, step_mode, read):
    """Reset, run (one call per step in 's', one call in 'm'); ``read()`` after every call."""
    reset(net)
    torch.manual_seed(0)
    got = []
    for xt in (x if step_mode == "s" else [x]):
        net(xt)
        got.append(read())
    return got


def sn(net):
    return [net[1], net[3]]


def assert_reads_equal(got, ref, where):
    assert len(got) == len(ref) > 0, (where, len(got), len(ref))
    for i, (g, r) in enumerate(zip(got, ref)):
        assert torch.is_tensor(g), f"{where} [{i}]: {type(g).__name__} {g!r:.60}, not a tensor"
        assert g.shape == r.shape, (where, i, g.shape, r.shape)
        d = float((g.detach() - r.detach()).abs().max())
        assert d <= ATOL, f"{where} [{i}]: max |diff| {d:.3g}"


def under(net, mode, fn):
    saf_plugin.set_saf(net, mode)
    try:
        return fn()
    finally:
        saf_plugin.set_saf(net, None)


# --------------------------------------------------------------------------- v and v_seq


@pytest.mark.parametrize("mode", ["E", "F"])
@pytest.mark.parametrize("decay_input", DECAY_INPUT)
@pytest.mark.parametrize("step_mode", STEP_MODES)
def test_v_after_every_call_is_the_plain_membrane(float64, step_mode, decay_input, mode):
    """Plain: after each call, lif.v holds the post-reset membrane u[t] − θ s[t] (a tensor).
    SAF-E and SAF-F: reading lif.v gives that tensor (within 1e-12), for both neuron layers."""
    net, x = chain(step_mode, decay_input)

    def read():
        return [n.v.detach().clone() if torch.is_tensor(n.v) else n.v for n in sn(net)]

    ref = [v for vs in calls(net, x, step_mode, read) for v in vs]
    got = under(net, mode, lambda: [v for vs in calls(net, x, step_mode, read) for v in vs])
    assert_reads_equal(got, ref, f"lif.v, SAF-{mode}")


@pytest.mark.parametrize("mode", ["E", "F"])
@pytest.mark.parametrize("decay_input", DECAY_INPUT)
def test_v_seq_with_store_v_seq_is_the_plain_sequence(float64, decay_input, mode):
    """Step mode 'm', store_v_seq=True: plain, lif.v_seq is the [T, B, F] membrane sequence.
    Under SAF it must be the same tensor (fe87f08: None)."""
    net, x = chain("m", decay_input, store_v_seq=True)

    def read():
        return [n.v_seq.detach().clone() if torch.is_tensor(n.v_seq) else n.v_seq
                for n in sn(net)]

    ref = calls(net, x, "m", read)[0]
    assert all(r.shape == (T, B, 8) for r in ref)
    got = under(net, mode, lambda: calls(net, x, "m", read)[0])
    assert_reads_equal(got, ref, f"v_seq, SAF-{mode}")


# --------------------------------------------------------------------------- monitors, hooks


def monitored(net, x, step_mode, what):
    """Records of a SpikingJelly monitor (or a forward pre-hook) on every LIFNode over a run;
    attached to the model as it is (the SAF model under SAF)."""
    if what == "attribute":
        mon = monitor.AttributeMonitor("v", pre_forward=False, net=net,
                                       instance=neuron.LIFNode)
    elif what == "input":
        mon = monitor.InputMonitor(net, instance=neuron.LIFNode)
    else:
        seen = []
        hooks = [n.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
                 for n in sn(net)]
    try:
        calls(net, x, step_mode, lambda: None)
    finally:
        if what == "pre-hook":
            for h in hooks:
                h.remove()
        else:
            seen = [r.detach().clone() if torch.is_tensor(r) else r for r in mon.records]
            mon.remove_hooks()
    return seen


@pytest.mark.parametrize("what", ["attribute", "input", "pre-hook"])
@pytest.mark.parametrize("decay_input", DECAY_INPUT)
@pytest.mark.parametrize("step_mode", STEP_MODES)
def test_monitors_and_pre_hooks_on_neurons_see_plain_values(float64, step_mode, decay_input,
                                                            what):
    """AttributeMonitor('v', pre_forward=False) records the plain membrane after every call;
    InputMonitor and a forward pre-hook on a neuron record its plain input current I[t] (not
    the accumulation Y[t]); under SAF-E the records equal the plain ones within 1e-12 (fe87f08:
    v recorded as 0.0, inputs as accumulations)."""
    net, x = chain(step_mode, decay_input)
    ref = monitored(net, x, step_mode, what)
    got = under(net, "E", lambda: monitored(net, x, step_mode, what))
    assert_reads_equal(got, ref, f"{what} records")


@pytest.mark.parametrize("step_mode", STEP_MODES)
def test_monitors_under_saf_f_record_the_plain_values_on_the_first_sequence(float64, step_mode):
    """SAF-F: a monitor attached to the converted model records, over its first sequence,
    exactly what it records on the plain model: no extra records from saf-plugin's first-call
    probe (fe87f08 and 35d8858 ran the probe on a copy that kept the user's hooks: every
    monitor recorded the first call twice)."""
    net, x = chain(step_mode, False)
    ref = monitored(net, x, step_mode, "attribute")
    got = under(net, "F", lambda: monitored(net, x, step_mode, "attribute"))
    assert_reads_equal(got, ref, "AttributeMonitor('v') records, SAF-F")


# --------------------------------------------------------------------------- returning v


class ReturnsMembrane(nn.Module):
    """A readout that returns the last neuron's membrane: in step mode 's' its v after the
    step, in 'm' its v_seq (store_v_seq=True)."""

    def __init__(self, step_mode, decay_input):
        super().__init__()
        self.fc1, self.sn1 = layer.Linear(6, 8), lif(decay_input)
        self.fc2 = layer.Linear(8, 3)
        self.out = lif(decay_input, store_v_seq=(step_mode == "m"))
        functional.set_step_mode(self, step_mode)

    def forward(self, x):
        self.out(self.fc2(self.sn1(self.fc1(x))))
        return self.out.v_seq if self.out.step_mode == "m" else self.out.v


@pytest.mark.parametrize("decay_input", DECAY_INPUT)
@pytest.mark.parametrize("step_mode", STEP_MODES)
def test_a_forward_returning_v_returns_the_plain_tensor_with_a_gradient(float64, step_mode,
                                                                        decay_input):
    """Plain: the model returns a membrane tensor that carries a graph. SAF-E must return the
    same values (within 1e-12) as a tensor that requires grad, and backward() of a loss on it
    must reach the first layer's weight (fe87f08 returned the float 0.0 / None)."""
    torch.manual_seed(0)
    net = ReturnsMembrane(step_mode, decay_input).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(T, B, 6, generator=g, dtype=torch.float64) * 2
    ready(net, x, step_mode)
    plain_with_rates(net, x, step_mode)

    def run():
        reset(net)
        outs = [net(xt) for xt in x] if step_mode == "s" else [net(x)]
        return outs

    ref = [o.detach() for o in run()]
    saf_plugin.set_saf(net, "E")
    try:
        net.zero_grad()
        outs = run()
        assert all(torch.is_tensor(o) and o.requires_grad for o in outs), [type(o) for o in outs]
        assert_reads_equal(outs, ref, "returned membrane")
        outs[-1].sum().backward()
        assert net.fc1.weight.grad is not None and float(net.fc1.weight.grad.abs().sum()) > 0
    finally:
        saf_plugin.set_saf(net, None)
