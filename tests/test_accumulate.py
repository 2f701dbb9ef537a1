"""``set_saf(net, mode, accumulate=torch.float64)``: SAF's accumulations in float64, the model in
float32 (saf_plugin/runtime.py, docs/faq.md "Mixed precision? Long sequences?").

The accumulations grow like t for IF neurons, so in float32 a rounding flip at a threshold
changes a spike after some hundred steps; in float64 SAF follows the plain float32 model until
that model's own rounding leaves the float64 one (measured on CPU: docs/faq.md)."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import saf_plugin
from references import MatMul

F64 = torch.float64


def if_net(step_mode: str, seed: int = 2) -> nn.Module:
    """Linear–IF–Linear–IF–Linear (soft reset); both layers fire at rates of about 0.1."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        layer.Linear(16, 32, step_mode=step_mode), neuron.IFNode(v_reset=None, step_mode=step_mode),
        layer.Linear(32, 24, step_mode=step_mode), neuron.IFNode(v_reset=None, step_mode=step_mode),
        layer.Linear(24, 5, step_mode=step_mode))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(1.5)
    return net


def spike_hooks(net: nn.Module) -> list:
    """The spikes every neuron of ``net`` returns, per call (hooks see the real spikes)."""
    rec = []
    for m in net.modules():
        if isinstance(m, neuron.BaseNode):
            m.register_forward_hook(lambda mod, i, o: rec.append(o))
    return rec


def first_flip(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4):
    """The first step (dim 0) at which ``a`` and ``b`` differ by more than ``tol`` (None)."""
    bad = ((a.double() - b.double()).abs().flatten(1).amax(1) > tol).nonzero()
    return int(bad[0]) if len(bad) else None


def test_a_long_if_sequence_follows_the_plain_float32_model():
    """T = 2000: with float32 accumulations the outputs leave the plain model at step 590
    (measured; it depends on the CPU's summation order), with float64 ones they stay equal (the
    plain float32 model itself leaves the float64 one at step 4487)."""
    T = 2000
    net = if_net("m")
    x = torch.rand(T, 4, 16, generator=torch.Generator().manual_seed(3))
    f32 = saf_plugin.set_saf(copy.deepcopy(net), "E")
    f64 = saf_plugin.set_saf(copy.deepcopy(net), "E", accumulate=F64)
    with torch.no_grad():
        ref, f32, f64 = net(x), f32(x), f64(x)
    assert first_flip(f32, ref) is not None, "float32 accumulations no longer flip: lengthen T"
    assert first_flip(f64, ref) is None
    assert f64.dtype == torch.float32
    torch.testing.assert_close(f64, ref, rtol=0, atol=1e-5)


def test_saf_f_and_step_mode_s_keep_the_spikes_of_a_long_sequence():
    """SAF-F (step mode 'm') and SAF-E in step mode 's' with float64 accumulations: every
    hidden spike of 1200 IF steps is the plain float32 model's (hooks see the real spikes)."""
    T = 1200
    x = torch.rand(T, 4, 16, generator=torch.Generator().manual_seed(3))
    net = if_net("m")
    saf = saf_plugin.set_saf(copy.deepcopy(net), "F", accumulate=F64)
    ref = spike_hooks(net)
    with torch.no_grad():
        net(x)
    got = spike_hooks(saf)
    with torch.no_grad():
        saf(x)
    got = got[-2:]  # (SAF-F's first call runs a copy of the model first, hooks included)
    assert [g.dtype for g in got] == [torch.float32] * 2
    assert all(torch.equal(g, r) for g, r in zip(got, ref))

    net = saf_plugin.set_saf(if_net("s"), "E", accumulate=F64)
    got = spike_hooks(net)
    with torch.no_grad():
        for t in range(T):
            net(x[t])
    assert torch.equal(torch.stack(got[0::2]), ref[0]) and torch.equal(torch.stack(got[1::2]),
                                                                       ref[1])


# ------------------------------------------------------------------------- gradients


def sj_lif(step_mode: str) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        layer.Linear(8, 16, step_mode=step_mode),
        neuron.LIFNode(tau=2.0, v_reset=None, step_mode=step_mode),
        layer.Linear(16, 12, step_mode=step_mode),
        neuron.ParametricLIFNode(v_reset=None, step_mode=step_mode),
        layer.Linear(12, 4, step_mode=step_mode))
    with torch.no_grad():
        net[0].weight.mul_(2.0)
    return net


def sj_per_step() -> nn.Module:
    """Eval-mode BatchNorm and conv on accumulations, MaxPool and a hard-reset LIF per step."""
    torch.manual_seed(0)
    net = nn.Sequential(
        layer.Conv2d(2, 6, 3, padding=1), layer.BatchNorm2d(6), neuron.LIFNode(tau=2.0),
        layer.MaxPool2d(2), layer.Flatten(), layer.Linear(6 * 4 * 4, 8),
        neuron.IFNode(v_reset=None), layer.Linear(8, 3))
    with torch.no_grad():
        net[0].weight.mul_(3.0)
        net[1].running_mean.normal_(0, 0.2)
    net[1].eval()
    return net


def snn_leaky() -> nn.Module:
    snn = pytest.importorskip("snntorch")
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), snn.Leaky(0.9, init_hidden=True, learn_beta=True),
                         nn.Linear(16, 4), snn.Leaky(0.8, init_hidden=True, output=True,
                                                     reset_delay=False))


def grads(net: nn.Module, x: torch.Tensor, mode: str, step_mode: str) -> dict:
    """The parameter gradients of a loss at every step (SAF-E) or at the last (SAF-F)."""
    saf_plugin.training.reset_state(net)
    net.zero_grad()
    if step_mode == "m":
        out = net(x)
        (out.square().mean() if mode == "E" else out[-1].square().mean()).backward()
    else:
        for t in range(x.shape[0]):
            out = net(x[t])
            out = out[1] if isinstance(out, tuple) else out  # snnTorch: (spk, mem)
            if mode == "E" or t == x.shape[0] - 1:
                out.square().mean().backward()
    return {k: p.grad for k, p in net.named_parameters() if p.grad is not None}


CASES = {
    "lif-s-E": (lambda: sj_lif("s"), "E", "s", (8, 3, 8)),
    "lif-m-E": (lambda: sj_lif("m"), "E", "m", (8, 3, 8)),
    "lif-m-F": (lambda: sj_lif("m"), "F", "m", (8, 3, 8)),
    "per-step-s-E": (sj_per_step, "E", "s", (6, 2, 2, 8, 8)),
    "snntorch-s-E": (snn_leaky, "E", "s", (8, 3, 8)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_are_the_float64_models(case):
    """The float32 model with float64 accumulations gets the ordinary SAF gradients of the same
    model in float64 (to float32 rounding): the option changes where SAF rounds, not what it
    computes. Gradients reach the float32 parameters."""
    build, mode, step_mode, shape = CASES[case]
    net = build()
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1)) * 2
    g64 = grads(saf_plugin.set_saf(copy.deepcopy(net).double(), mode), x.double(), mode, step_mode)
    g32 = grads(saf_plugin.set_saf(net, mode, accumulate=F64), x, mode, step_mode)
    assert g32.keys() == g64.keys() and len(g32) >= 4
    assert any(float(g.abs().max()) > 0 for g in g32.values())
    for k, g in g32.items():
        assert g.dtype == torch.float32, k
        torch.testing.assert_close(g, g64[k].float(), rtol=1e-5, atol=1e-6, msg=k)


# ------------------------------------------------------------------------- the API


def test_outputs_keep_the_models_dtype():
    pytest.importorskip("snntorch")
    net = saf_plugin.set_saf(sj_per_step(), "E", accumulate=F64)
    spikes = spike_hooks(net)
    out = net(torch.rand(2, 2, 8, 8))
    assert out.dtype == torch.float32 and {s.dtype for s in spikes} == {torch.float32}
    net = saf_plugin.set_saf(snn_leaky(), "E", accumulate=F64)
    for _ in range(2):
        spk, mem = net(torch.rand(3, 8))
        assert spk.dtype == mem.dtype == torch.float32
    assert net[1].mem.dtype == torch.float32


@pytest.mark.parametrize("bad", [torch.float32, torch.float16, "float64", 64])
def test_other_values_are_refused(bad):
    net = if_net("s")
    with pytest.raises(ValueError, match="accumulate=torch.float64"):
        saf_plugin.set_saf(net, "E", accumulate=bad)
    assert saf_plugin.saf_mode(net) is None


def test_mode_none_takes_no_accumulate():
    net = saf_plugin.set_saf(if_net("s"), "E", accumulate=F64)
    with pytest.raises(ValueError, match="mode None"):
        saf_plugin.set_saf(net, None, accumulate=F64)
    assert saf_plugin.saf_mode(net) == "E"
    saf_plugin.set_saf(net, "E")  # switching again without it: float32 accumulations
    assert net._saf_rt.accumulate is None


def test_deepcopy_and_pickling_keep_the_option():
    net = saf_plugin.set_saf(if_net("m"), "E", accumulate=F64)
    x = torch.rand(50, 2, 16)
    with torch.no_grad():
        ref = net(x)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    for other in (copy.deepcopy(net), torch.load(buf, weights_only=False)):
        assert other._saf_rt.accumulate is F64
        functional.reset_net(other)
        with torch.no_grad():
            assert torch.equal(other(x), ref)


def test_the_multi_step_scan_runs_float64_without_warnings():
    """Step mode 'm' hands float64 accumulations to saf_plugin.kernels.scan ("auto": the C++
    CPU scan, which runs float64; elsewhere the PyTorch scan): no warning, one per fallback."""
    net = saf_plugin.set_saf(sj_lif("m"), "E", accumulate=F64)
    spikes = spike_hooks(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            net(torch.rand(4, 2, 8)).sum().backward()
            functional.reset_net(net)
    assert {s.dtype for s in spikes} == {torch.float32}


class MyLinear(nn.Module):
    """A linear map SAF cannot see into (declared with register_linear)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 16) * 0.3)

    def forward(self, x):
        return MatMul.apply(x, self.weight)


saf_plugin.register_linear(MyLinear)


def test_a_registered_linear_map_gets_its_parameters_in_float64():
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(8, 16), neuron.IFNode(v_reset=None), MyLinear())
    calls = []
    net[2].register_forward_hook(lambda m, i, o: calls.append(o.dtype))
    x = torch.rand(6, 3, 8) * 2
    ref = torch.stack([net(x[t]) for t in range(6)])
    functional.reset_net(net)
    saf_plugin.set_saf(net, "E", accumulate=F64)
    calls.clear()
    out = torch.stack([net(x[t]) for t in range(6)])
    torch.testing.assert_close(out, ref)
    assert calls == [torch.float64] * 6  # the hook sees the accumulations, once per call
    out.sum().backward()
    assert net[2].weight.grad.dtype == torch.float32
    assert net[2].weight.dtype == torch.float32
