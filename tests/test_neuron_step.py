"""saf_plugin.neuron_step's closed-form steps outside any model, float64: ``step`` (SpikingJelly's
LIF/IF/ParametricLIF), ``step_with_membrane`` (snnTorch's Leaky) and ``spikes_of``, against
hand-written neurons (docs/theory.md). The per-step route (``per_step``) is tested through
models in test_neurons_per_step.py and test_extending.py; ``forward`` through every model test.
"""

from __future__ import annotations

import pytest
import torch

from saf_plugin import core, neuron_step
from saf_plugin.modes import Mode
from saf_plugin.neuron_step import NeuronParams, NeuronState

D = torch.float64
T, N = 8, 64


class _StraightThrough(torch.autograd.Function):
    """H(x) = [x >= 0] forward, derivative 1 backward (so a gradient shows ∂u alone)."""

    @staticmethod
    def forward(ctx, x):
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        return g


def sj_lif(current, lam, theta, decay_input=False):
    """SpikingJelly's soft-reset LIF (v_reset=None) stepped by hand: H = [x >= 0]."""
    v, ss, vs = torch.zeros_like(current[0]), [], []
    for t in range(current.shape[0]):
        inp = (1 - lam) * current[t] if decay_input else current[t]
        u = lam * v + inp
        s = (u >= theta).to(D)
        v = u - theta * s
        ss.append(s), vs.append(v)
    return torch.stack(ss), torch.stack(vs)


def leaky(current, beta, theta, reset="subtract"):
    """snnTorch's Leaky (reset_delay=True) stepped by hand: H = [x > 0]."""
    mem, ss, mems = torch.zeros_like(current[0]), [], []
    for t in range(current.shape[0]):
        r = (mem - theta > 0).to(D) if reset == "subtract" else torch.zeros_like(mem)
        mem = beta * mem + current[t] - theta * r
        ss.append((mem - theta > 0).to(D)), mems.append(mem)
    return torch.stack(ss), torch.stack(mems)


def current(seed, high=1.2, shape=(T, N)):
    return torch.empty(shape, dtype=D).uniform_(-0.2, high, generator=torch.Generator()
                                                .manual_seed(seed))


def assert_fires(s):
    assert 0.05 < float(s.mean()) < 0.95, float(s.mean())


def params(lam, theta, **kw):
    return NeuronParams(lam, None, theta, kw.pop("input_scale", None),
                        kw.pop("surrogate", _StraightThrough.apply), **kw)


@pytest.mark.parametrize("decay_input", [False, True])
@pytest.mark.parametrize("lam_in", [None, 0.9, 1.0])
def test_step_fires_the_lif_spikes_from_an_accumulation_of_any_decay(decay_input, lam_in):
    """The input accumulated with the neuron's own λ, or with another decay (a neuron whose
    input arrives accumulated by a sender of another decay re-accumulates it)."""
    lam, theta = 0.5, 0.6
    cur = current(1, high=2.4 if decay_input else 1.0)
    s_ref, _ = sj_lif(cur, lam, theta, decay_input)
    assert_fires(s_ref)
    decay_in = lam if lam_in is None else lam_in
    x = core.accumulate(cur, decay_in)
    p = params(lam, theta, input_scale=(1 - lam) if decay_input else None)
    st, accs, spikes = NeuronState(), [], []
    for t in range(T):
        acc, s = neuron_step.step(x[t], decay_in, st, p, Mode.E, None)
        accs.append(acc), spikes.append(s)
        assert st.acc is not None and not st.acc.requires_grad
    assert torch.equal(torch.stack(spikes), s_ref)
    torch.testing.assert_close(torch.stack(accs), core.accumulate(s_ref, lam), rtol=0,
                               atol=1e-12)


def test_step_saf_f_forward_is_exact_and_backward_is_the_representation():
    lam, theta = 0.5, 0.6
    cur = current(2)
    s_ref, _ = sj_lif(cur, lam, theta)
    assert_fires(s_ref)
    x = core.accumulate(cur, lam)
    c = core.bias_series(0, T, lam, like=x)
    st, p = NeuronState(), params(lam, theta)
    for t in range(T):
        xt = x[t].clone().requires_grad_()
        acc, s = neuron_step.step(xt, lam, st, p, Mode.F, c[t])
        assert s is None, "SAF-F gives no spikes: spikes_of reads them from the accumulation"
        torch.testing.assert_close(acc.detach(), core.accumulate(s_ref, lam)[t], rtol=0,
                                   atol=1e-12)
        acc.sum().backward()
        inside = ((xt > 0) & (xt < theta * c[t])).to(D)
        assert torch.equal(xt.grad, inside / theta)


@pytest.mark.parametrize("decay_input", [False, True])
def test_step_gives_a_learnable_decay_the_history_detached_gradient(decay_input):
    """ParametricLIF: ∂u[t]/∂λ with v[t−1] held constant: v[t−1], or v[t−1] − I[t] with
    decay_input (the surrogate's derivative is 1 here, so ∂â[t]/∂λ = ∂u[t]/∂λ)."""
    lam, theta = 0.6, 0.5
    cur = current(3, high=1.6 if decay_input else 0.8)
    s_ref, v_ref = sj_lif(cur, lam, theta, decay_input)
    assert_fires(s_ref)
    x = core.accumulate(cur, lam)
    w = torch.tensor(lam, dtype=D, requires_grad=True)
    p = NeuronParams(lam, w, theta, (1 - lam) if decay_input else None, _StraightThrough.apply)
    st = NeuronState()
    for t in range(T):
        acc, s = neuron_step.step(x[t], lam, st, p, Mode.E, None)
        assert torch.equal(s.detach(), s_ref[t])
        (g,) = torch.autograd.grad(acc.sum(), w)
        v_prev = v_ref[t - 1] if t else torch.zeros(N, dtype=D)
        expected = (v_prev - cur[t]) if decay_input else v_prev
        torch.testing.assert_close(g, expected.sum(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reset", ["subtract", "none"])
def test_step_with_membrane_is_snntorchs_leaky(reset):
    beta, theta = 0.8, 0.7
    cur = current(4, high=0.9)
    s_ref, mem_ref = leaky(cur, beta, theta, reset)
    assert_fires(s_ref)
    x = core.accumulate(cur, beta)
    p = params(beta, torch.tensor(theta, dtype=D), surrogate=lambda v: (v > 0).to(D),
               reset_decay=1.0 if reset == "subtract" else 0.0, resets=reset != "none",
               reset_delay=True)
    st, mem = NeuronState(), None
    for t in range(T):
        out, spk, mem = neuron_step.step_with_membrane(x[t], beta, st, p, Mode.E, None, mem)
        assert torch.equal(spk, s_ref[t])
        torch.testing.assert_close(mem, mem_ref[t], rtol=0, atol=1e-12)
        torch.testing.assert_close(out, core.accumulate(s_ref, beta)[t], rtol=0, atol=1e-12)


def test_step_with_membrane_graded_spikes_pass_on_their_accumulation():
    beta, theta, g = 0.8, 0.7, torch.tensor(1.5, dtype=D)
    cur = current(5, high=0.9)
    s_ref, _ = leaky(cur, beta, theta)
    assert_fires(s_ref)
    x = core.accumulate(cur, beta)
    p = params(beta, torch.tensor(theta, dtype=D), surrogate=lambda v: (v > 0).to(D),
               reset_decay=1.0, graded=g)
    st, mem = NeuronState(), None
    for t in range(T):
        out, spk, mem = neuron_step.step_with_membrane(x[t], beta, st, p, Mode.E, None, mem)
        assert torch.equal(spk, 1.5 * s_ref[t])
        torch.testing.assert_close(out, core.accumulate(1.5 * s_ref, beta)[t], rtol=0,
                                   atol=1e-12)


def test_spikes_of_rounds_to_the_exact_spikes_and_passes_the_gradient_of_the_accumulation():
    lam = 0.9
    s = (torch.rand(T, N, generator=torch.Generator().manual_seed(6), dtype=D) > 0.6).to(D)
    acc = core.accumulate(s, lam)
    noisy = (acc + 1e-9 * torch.randn(T, N, dtype=D)).requires_grad_()
    got = neuron_step.spikes_of(noisy, None, lam, True)
    assert torch.equal(got, s) and bool(s.any())
    got.backward(torch.arange(T * N, dtype=D).view(T, N))
    assert torch.equal(noisy.grad, torch.arange(T * N, dtype=D).view(T, N))
    prev = acc[3]
    one = neuron_step.spikes_of(acc[4], prev, lam, False)
    assert one.shape == (N,) and torch.equal(one, s[4])
    assert torch.equal(neuron_step.spikes_of(acc[4:], prev, lam, True), s[4:])
