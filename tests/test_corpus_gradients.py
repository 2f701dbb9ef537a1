"""SAF-E gradients of a model with BatchNorm in training mode and MaxPool, against an
independent reference written here by hand.

The reference is OTTT's rule (docs/theory.md, "SAF-E and Theorem 1"), built from the plain SpikingJelly
model itself, nothing of saf-plugin:

- the model runs one step at a time (step mode 's'), a loss at every step, backward per step;
- neuron states are detached after every step (``functional.detach_net``), so the membrane
  history is a constant and the gradient at step t is OTTT's instantaneous one;
- every linear layer (Conv2d, Linear) takes its value from its per-step input s[t] and its
  weight gradient from the presynaptic trace â[t] = λ â[t−1] + s[t] of that input (the value of
  a layer fed by a max pooling is the pooled spikes, so its trace is the trace of the pooled
  spikes); the gradient with respect to its input is the plain one (W^T δ). The bias gets δ
  (added once), as SpikingJelly's OTTT gives it. The first layer is fed the trace of x.
- everything else runs on the per-step values, as the plain model runs it: BatchNorm in training
  mode (batch statistics of step t, gradients of γ and β at step t's normalised values), MaxPool
  (gradient routed to the step's maxima), AvgPool, Flatten.

SAF-E must give the same per-step gradients (OTTT_O), and in step mode 'm' one backward of the
summed losses must give their sum (OTTT_A).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import corpus_models as CM
from corpus_harness import FiringRecorder, assert_fires, calibrate, run
import saf_plugin

LAM = 0.5  # every neuron here is LIF τ 2
T, B = 4, 4



def _linear_only():
    """The same layout with only linear maps between neurons (no BatchNorm, AvgPool for
    MaxPool): there SAF-E's gradients are OTTT's with the engine before per-step operations existed, which checks the reference."""
    return nn.Sequential(
        layer.Conv2d(2, 6, 3, padding=1), CM.lif(), layer.AvgPool2d(2),
        layer.Conv2d(6, 6, 3, padding=1), CM.lif(), layer.AvgPool2d(2),
        layer.Flatten(), layer.Linear(6 * 2 * 2, 5))


def _model(step_mode: str = "s", build=CM.train_bn_maxpool) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(21)
    net = build().double().train()
    functional.set_step_mode(net, step_mode)
    g = torch.Generator().manual_seed(22)
    x = torch.rand(T, B, 2, 8, 8, generator=g, dtype=torch.float64) * 2
    calibrate(net, lambda: run(net, x, step_mode))
    return net, x


def _target():
    return torch.randint(0, 5, (B,), generator=torch.Generator().manual_seed(23))


def _grads(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}


def _linear_with_trace(module: nn.Module, s: torch.Tensor, trace: torch.Tensor) -> torch.Tensor:
    """Value module(s); weight gradient from module(trace); input gradient to s (W^T δ)."""
    through = trace.detach() + (s - s.detach())  # value: the trace; gradient: to s
    for_grad = module(through)
    with torch.no_grad():
        value = module(s)
    return for_grad + (value - for_grad).detach()


def ottt_reference(net: nn.Sequential, x_seq: torch.Tensor, target: torch.Tensor):
    """Per step: (output, gradients) of OTTT's rule as described in the module docstring."""
    functional.reset_net(net)
    traces: dict[int, torch.Tensor] = {}
    result = []
    for x in x_seq:
        net.zero_grad()
        h = x
        for i, m in enumerate(net):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                traces[i] = LAM * traces[i] + h.detach() if i in traces else h.detach()
                h = _linear_with_trace(m, h, traces[i])
            else:  # neurons (state detached below), BatchNorm (train), pooling, flatten
                h = m(h)
        F.cross_entropy(h, target).backward()
        functional.detach_net(net)
        result.append((h.detach(), _grads(net)))
    return result


def saf_e_per_step(net: nn.Module, x_seq: torch.Tensor, target: torch.Tensor):
    functional.reset_net(net)
    result = []
    for x in x_seq:
        net.zero_grad()
        out = net(x)
        F.cross_entropy(out, target).backward()  # SAF detaches its own history
        result.append((out.detach(), _grads(net)))
    return result


def _assert_grads_equal(got: dict, want: dict, where: str):
    assert want and got.keys() == want.keys(), (where, sorted(got), sorted(want))
    for k in want:
        assert want[k].abs().max() > 0 or k.endswith("bias"), f"{where}: {k} has no gradient"
        torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-12,
                                   msg=lambda m, k=k: f"{where} {k}: {m}")


def test_reference_is_not_bptt_and_every_layer_fires():
    """The reference differs from plain BPTT (so it is a real check of the OTTT rule) and its
    forward is the plain model's; every neuron layer fires."""
    net, x = _model()
    target = _target()
    rec = FiringRecorder(net)
    ref = ottt_reference(net, x, target)
    rec.remove()
    assert_fires(rec.rates(), "reference")
    plain = run(net, x, "s")
    torch.testing.assert_close(torch.stack([o for o, _ in ref]), plain, rtol=0, atol=1e-12)
    net.zero_grad()
    functional.reset_net(net)
    sum(F.cross_entropy(net(xt), target) for xt in x).backward()  # BPTT
    total = {k: sum(g[k] for _, g in ref) for k in ref[0][1]}
    diff = max(float((total[k] - p.grad).abs().max()) for k, p in net.named_parameters())
    assert diff > 1e-6, "the OTTT reference coincides with BPTT: the test would be vacuous"


@pytest.mark.parametrize("build", [
    pytest.param(_linear_only, id="linear-only"),
    pytest.param(CM.train_bn_maxpool, id="train-batchnorm-maxpool")])
def test_saf_e_per_step_gradients_equal_ottt_reference(build):
    net, x = _model("s", build)
    target = _target()
    saf = copy.deepcopy(net)
    ref = ottt_reference(net, x, target)
    saf_plugin.set_saf(saf, "E")
    got = saf_e_per_step(saf, x, target)
    for t, ((o_ref, g_ref), (o_got, g_got)) in enumerate(zip(ref, got)):
        torch.testing.assert_close(o_got, o_ref, rtol=0, atol=1e-9)
        _assert_grads_equal(g_got, g_ref, f"step {t}")


def ottt_reference_multistep(net: nn.Sequential, x_seq: torch.Tensor, target: torch.Tensor):
    """The same rule in step mode 'm', where SpikingJelly's BatchNorm normalises over [T·B]: the
    layers run on [T, B, ...] as the plain model runs them, each neuron one step at a time with
    its state detached after every step, linear layers with the traces of their inputs; one
    backward of the summed per-step losses (OTTT_A)."""
    functional.reset_net(net)
    net.zero_grad()
    h = x_seq
    for m in net:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            acc, traces = None, []
            for st in h.detach():
                acc = st if acc is None else LAM * acc + st
                traces.append(acc)
            h = _linear_with_trace(m, h, torch.stack(traces))
        elif isinstance(m, neuron.BaseNode):
            steps = []
            for ht in h:
                steps.append(m.single_step_forward(ht))
                m.detach()
            h = torch.stack(steps)
        else:
            h = m(h)
    sum(F.cross_entropy(o, target) for o in h).backward()
    return h.detach(), _grads(net)


@pytest.mark.parametrize("build", [
    pytest.param(_linear_only, id="linear-only"),
    pytest.param(CM.train_bn_maxpool, id="train-batchnorm-maxpool")])
def test_saf_e_multistep_gradient_equals_ottt_reference(build):
    net, x = _model("m", build)
    target = _target()
    saf = copy.deepcopy(net)
    ref_out, ref = ottt_reference_multistep(net, x, target)
    torch.testing.assert_close(ref_out, run(net, x, "m"), rtol=0, atol=1e-12)  # plain forward
    saf_plugin.set_saf(saf, "E")
    functional.reset_net(saf)
    saf.zero_grad()
    out = saf(x)
    torch.testing.assert_close(out.detach(), ref_out, rtol=0, atol=1e-9)
    sum(F.cross_entropy(o, target) for o in out).backward()
    _assert_grads_equal(_grads(saf), ref, "step mode 'm'")
