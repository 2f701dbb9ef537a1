"""SAF-E forward == SpikingJelly's own LIF forward (float64, every layer firing)."""

import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import saf_plugin
import sj_models as M

SHAPES = {"mlp": (6, 12), "conv": (6, 2, 8, 8), "folded": (6, 2, 8, 8), "residual": (6, 2, 8, 8)}
BUILD = {"mlp": M.mlp, "conv": M.conv, "folded": M.folded, "residual": M.residual}


def assert_all_fire(net, fn):
    rates = M.spike_counts(net, fn)
    assert rates, "no neuron layer ran"
    for name, rate in rates.items():
        assert 0.0 < rate < 1.0, f"layer {name} fires at rate {rate}: the test would be vacuous"


def compare(net, x, step_mode, mode="E"):
    ref = M.run(net, x, step_mode)
    assert_all_fire(net, lambda: M.run(net, x, step_mode))
    saf_plugin.set_saf(net, mode)
    out = M.run(net, x, step_mode)
    saf_plugin.set_saf(net, None)
    back = M.run(net, x, step_mode)
    assert torch.equal(back, ref), "set_saf(net, None) must restore the original forward bit for bit"
    return ref, out


@pytest.mark.parametrize("arch", list(BUILD))
@pytest.mark.parametrize("step_mode", ["s", "m"])
@pytest.mark.parametrize("decay_input", [False, True])
@pytest.mark.parametrize("T", [1, 4, 16])
def test_saf_e_forward_equals_lif(float64, arch, step_mode, decay_input, T):
    if arch == "folded" and step_mode == "s":
        pytest.skip("SeqToANNContainer is multi-step only")
    torch.manual_seed(T)
    net = M.strengthen(BUILD[arch](decay_input), gain=3.0 if decay_input else 2.0, bias=0.8)
    functional.set_step_mode(net, step_mode)
    x = torch.rand(T, *SHAPES[arch]) * (3.0 if decay_input else 1.0)
    ref, out = compare(net, x, step_mode)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("T", [1, 6])
def test_ottt_vgg_forward_equals_lif(float64, T):
    torch.manual_seed(1)
    net = M.strengthen(M.vgg(width=4), gain=2.0, bias=0.3)
    x = torch.rand(T, 2, 3, 16, 16)
    for train in (False, True):  # OTTTLIFNode returns [spike, trace] in training
        net.train(train)
        ref, out = compare(net, x, "s")
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_mixed_tau_and_if_neurons_are_exact(float64, step_mode):
    """Different decays in different layers: the receiving layer re-accumulates its input."""
    torch.manual_seed(2)
    net = nn.Sequential(
        layer.Linear(12, 32), M.lif(2.0), layer.Linear(32, 32),
        neuron.IFNode(v_reset=None), layer.Linear(32, 24), M.lif(4.0, decay_input=True),
        layer.Linear(24, 5))
    M.strengthen(net, gain=2.0, bias=0.5)
    functional.set_step_mode(net, step_mode)
    x = torch.rand(12, 3, 12)
    ref, out = compare(net, x, step_mode)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-11)


@pytest.mark.parametrize("step_mode", ["s", "m"])
@pytest.mark.parametrize("decay_input", [False, True])
def test_parametric_lif_forward(float64, step_mode, decay_input):
    torch.manual_seed(3)
    net = nn.Sequential(
        layer.Linear(12, 32), neuron.ParametricLIFNode(init_tau=2.0, decay_input=decay_input, v_reset=None),
        layer.Linear(32, 24), neuron.ParametricLIFNode(init_tau=3.0, decay_input=decay_input, v_reset=None),
        layer.Linear(24, 5))
    M.strengthen(net, gain=3.0 if decay_input else 1.5, bias=0.5)
    with torch.no_grad():
        net[1].w.fill_(0.3)
    functional.set_step_mode(net, step_mode)
    x = torch.rand(8, 3, 12) * 2
    ref, out = compare(net, x, step_mode)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-11)


def test_sltt_neuron_forward(float64):
    torch.manual_seed(4)
    net = nn.Sequential(layer.Linear(12, 32), neuron.SLTTLIFNode(v_reset=None), layer.Linear(32, 5),
                        neuron.SLTTLIFNode(v_reset=None))
    M.strengthen(net, gain=4.0, bias=1.0)
    x = torch.rand(8, 6, 12) * 4
    ref, out = compare(net, x, "s")
    assert torch.equal(out, ref)  # the exit neuron returns its spikes: 0/1 exactly


def test_float32_spike_agreement():
    """float32: rounding can flip a spike at the threshold; we state the tolerance."""
    torch.manual_seed(5)
    net = M.strengthen(M.conv(), gain=1.5)
    functional.set_step_mode(net, "m")
    x = torch.rand(16, 8, 2, 8, 8)
    ref, out = compare(net, x, "m")
    assert (out - ref).abs().max() < 1e-3
