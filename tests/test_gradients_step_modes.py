"""Gradients with mixed and learnt decays are the same in both step modes, and SAF-E's equal
OTTT's rule (docs/theory.md, "SAF-E and Theorem 1", "Operations across time").

OTTT's rule, written here from the plain SpikingJelly model: it runs one step at a time with
every neuron's state detached after each step, and each linear layer takes its weight gradient
from the trace of its per-step input with the decay of the neuron it feeds (the readout, which
feeds none, from the trace with the decay of the neuron before it). In step mode 'm' SAF learns
which neuron a linear layer feeds from a probe of its first call (its copies' hooks removed:
checked here too); before, the first neuron's decay was used, and the two step modes differed
by 5.8 % (PLIF τ 2.0 / 2.2) to 42 % (LIF τ 2 / 8).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import saf_plugin
import sj_models as M
from references import TraceLinear

T, B = 5, 4


def _net(kind: str) -> nn.Sequential:
    torch.manual_seed(3)
    if kind == "lif_2_8":
        sn = [neuron.LIFNode(tau=2.0, v_reset=None, v_threshold=0.5, decay_input=False),
              neuron.LIFNode(tau=8.0, v_reset=None, v_threshold=0.5, decay_input=False)]
    elif kind == "plif_2.0_2.2":
        sn = [neuron.ParametricLIFNode(init_tau=2.0, v_reset=None, v_threshold=0.5),
              neuron.ParametricLIFNode(init_tau=2.2, v_reset=None, v_threshold=0.5)]
    elif kind == "hard_reset_if_lif":
        sn = [neuron.IFNode(v_threshold=0.6), neuron.LIFNode(tau=4.0, v_threshold=0.4)]
    else:
        raise ValueError(kind)
    net = nn.Sequential(layer.Linear(6, 16), sn[0], layer.Linear(16, 12), sn[1],
                        layer.Linear(12, 3))
    return M.strengthen(net, gain=2.0, bias=0.3)


def _decay(m) -> float:
    from saf_plugin.adapters import spikingjelly as sj

    return sj.decay_value(m)


def _ottt_reference(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Σ_t of OTTT's per-step gradients (see the module docstring), from the plain model."""
    net = copy.deepcopy(net)
    functional.set_step_mode(net, "s")
    mods = list(net)
    lams = []
    for i, m in enumerate(mods):
        if isinstance(m, nn.Linear):
            nxt = next((n for n in mods[i + 1:] if isinstance(n, neuron.BaseNode)), None)
            prev = next((n for n in reversed(mods[:i]) if isinstance(n, neuron.BaseNode)), None)
            lams.append(_decay(nxt if nxt is not None else prev))
    functional.reset_net(net)
    net.zero_grad()
    traces = [None] * len(lams)
    for t in range(x.shape[0]):
        h, k = x[t], 0
        for m in mods:
            if isinstance(m, nn.Linear):
                lam = lams[k]
                traces[k] = h.detach() if traces[k] is None else lam * traces[k] + h.detach()
                h = TraceLinear.apply(h, traces[k], m.weight, m.bias)
                k += 1
            else:
                h = m(h)
        F.cross_entropy(h, y).backward()
        functional.detach_net(net)
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _saf_grads(net: nn.Sequential, x, y, step_mode: str, mode: str = "E") -> dict:
    net = copy.deepcopy(net)
    functional.set_step_mode(net, step_mode)
    saf_plugin.set_saf(net, mode)
    for _ in range(2):  # a second sequence too: what the first call learnt must hold
        functional.reset_net(net)
        net.zero_grad()
        if mode == "F":
            if step_mode == "m":
                F.cross_entropy(net(x)[-1], y).backward()
            else:
                with torch.no_grad():
                    for t in range(x.shape[0] - 1):
                        net(x[t])
                F.cross_entropy(net(x[-1]), y).backward()
        elif step_mode == "m":
            out = net(x)
            sum(F.cross_entropy(out[t], y) for t in range(x.shape[0])).backward()
        else:
            for t in range(x.shape[0]):
                F.cross_entropy(net(x[t]), y).backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _close(a: dict, b: dict, rtol: float = 1e-9) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=1e-12, msg=k)


def _fires(net, x) -> None:
    rates = M.spike_counts(net, lambda: M.run(net, x, "s"))
    functional.reset_net(net)
    assert rates and all(0 < r < 1 for r in rates.values()), rates


@pytest.mark.parametrize("kind", ["lif_2_8", "plif_2.0_2.2", "hard_reset_if_lif"])
def test_saf_e_gradients_are_ottts_rule_in_both_step_modes(float64, kind):
    net = _net(kind)
    x = torch.rand(T, B, 6) * 2
    y = torch.tensor([0, 1, 2, 1])
    _fires(net, x)
    ref = _ottt_reference(net, x, y)
    for step_mode in ("s", "m"):
        _close(_saf_grads(net, x, y, step_mode), ref)


@pytest.mark.parametrize("kind", ["lif_2_8", "plif_2.0_2.2"])
def test_saf_f_gradients_are_the_same_in_both_step_modes(float64, kind):
    net = _net(kind)
    x = torch.rand(T, B, 6) * 2
    y = torch.tensor([0, 1, 2, 1])
    _fires(net, x)
    _close(_saf_grads(net, x, y, "m", "F"), _saf_grads(net, x, y, "s", "F"))


@pytest.mark.parametrize("mode", ["E", "F"])
def test_no_hook_fires_on_the_probe_copies(float64, mode):
    """The first call of a SAF-F model, and of a model in step mode 'm', runs copies of the
    model to learn what only its data flow shows; the user's hooks do not see them."""
    net = _net("lif_2_8")
    functional.set_step_mode(net, "m")
    calls = []
    for m in net:
        m.register_forward_hook(lambda mod, i, o: calls.append(mod))
    saf_plugin.set_saf(net, mode)
    functional.reset_net(net)
    with torch.no_grad():
        net(torch.rand(T, B, 6))
    assert len(calls) == len(net), len(calls)
