"""saf_plugin.core, function by function, against independent brute-force computations in
float64 (docs/theory.md, "The neuron", "Spike accumulation and the SAF forward", "SAF-F and
Theorem 2", "ParametricLIF: the gradient of τ").

The references never call core: accumulations are explicit sums Σ_k λ^k x[t−k], the neuron is
the soft-reset LIF recurrence u[t] = λ (u[t−1] − θ s[t−1]) + I[t] stepped by hand, and the
decay gradient is a central finite difference of that membrane in λ.
"""

from __future__ import annotations

import pytest
import torch

from saf_plugin import core

D = torch.float64
T = 7


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def brute_accumulate(x, lam, prev=None):
    """â[t] = Σ_{k=0..t} λ^k x[t−k] (+ λ^{t+1} â[−1]), each step an explicit sum."""
    out = []
    for t in range(x.shape[0]):
        a = sum(lam ** k * x[t - k] for k in range(t + 1))
        if prev is not None:
            a = a + lam ** (t + 1) * prev
        out.append(a)
    return torch.stack(out)


def lif_reference(current, lam, theta, *, kappa=None, decay_input=False):
    """The soft-reset LIF stepped by hand: u[t] = λ (u[t−1] − θ s[t−1]) + I[t] (κ = λ), or
    u[t] = λ u[t−1] − κ θ s[t−1] + I[t] for another reset factor κ; with ``decay_input`` the
    input is (1 − λ) I[t]. Returns (spikes s, membranes u before reset, v after reset)."""
    u_prev = torch.zeros_like(current[0])
    s_prev = torch.zeros_like(current[0])
    ss, us, vs = [], [], []
    for t in range(current.shape[0]):
        inp = (1 - lam) * current[t] if decay_input else current[t]
        if kappa is None:
            u = lam * (u_prev - theta * s_prev) + inp
        else:
            u = lam * u_prev - kappa * theta * s_prev + inp
        s = (u >= theta).to(D)
        ss.append(s), us.append(u), vs.append(u - theta * s if kappa is None or kappa else u)
        u_prev, s_prev = u, s
    return torch.stack(ss), torch.stack(us), torch.stack(vs)


def firing_current(shape=(T, 64), seed=0, low=0.0, high=1.2):
    return torch.empty(shape, dtype=D).uniform_(low, high, generator=gen(seed))


def assert_fires(s):
    rate = float(s.mean())
    assert 0.05 < rate < 0.95, f"the test neuron should fire sometimes, not always: {rate}"


# ----------------------------------------------------------------------------- accumulations


@pytest.mark.parametrize("lam", [0.5, 0.9, 1.0, 0.0])
def test_accumulate_is_the_weighted_sum_and_deaccumulate_inverts_it(lam):
    x = torch.randn(T, 3, 4, dtype=D, generator=gen(1))
    a = core.accumulate(x, lam)
    torch.testing.assert_close(a, brute_accumulate(x, lam), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(core.deaccumulate(a, lam), x, rtol=0, atol=1e-13)
    torch.testing.assert_close(core.accumulate(core.deaccumulate(a, lam), lam), a,
                               rtol=0, atol=1e-13)


def test_accumulate_and_deaccumulate_continue_a_carried_state():
    x = torch.randn(T, 5, dtype=D, generator=gen(2))
    prev = torch.randn(5, dtype=D, generator=gen(3))
    lam = 0.7
    a = core.accumulate(x, lam, prev)
    torch.testing.assert_close(a, brute_accumulate(x, lam, prev), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(core.deaccumulate(a, lam, prev), x, rtol=0, atol=1e-13)
    # split in two halves, the second carrying the first's last accumulation
    first = core.accumulate(x[:3], lam, prev)
    torch.testing.assert_close(torch.cat([first, core.accumulate(x[3:], lam, first[-1])]), a,
                               rtol=0, atol=1e-14)


def test_step_functions_equal_the_sequence_functions_and_t0_is_the_identity():
    x = torch.randn(T, 6, dtype=D, generator=gen(4))
    lam = torch.tensor(0.6, dtype=D)  # a 0-d tensor decay works like a float
    acc, steps = None, []
    for xt in x:
        acc = core.accumulate_step(xt, acc, lam)
        steps.append(acc)
    a = torch.stack(steps)
    torch.testing.assert_close(a, brute_accumulate(x, 0.6), rtol=1e-13, atol=1e-13)
    x0, a0 = x[0], a[0]
    assert core.accumulate_step(x0, None, lam) is x0
    assert core.deaccumulate_step(a0, None, lam) is a0
    back = torch.stack([core.deaccumulate_step(a[t], a[t - 1] if t else None, lam)
                        for t in range(T)])
    torch.testing.assert_close(back, x, rtol=0, atol=1e-13)


def test_deaccumulate_treats_the_previous_accumulation_as_a_constant():
    a = torch.randn(T, 4, dtype=D, generator=gen(5), requires_grad=True)
    prev = torch.randn(4, dtype=D, generator=gen(6), requires_grad=True)
    core.deaccumulate(a, 0.5, prev).sum().backward()
    # x[t] = â[t] − λ â[t−1] with â[t−1] detached: each â[t] only reaches its own x[t]
    torch.testing.assert_close(a.grad, torch.ones_like(a), rtol=0, atol=0)
    assert prev.grad is None
    a2 = a.detach()[1].requires_grad_()
    p2 = a.detach()[0].requires_grad_()
    core.deaccumulate_step(a2, p2, 0.5).sum().backward()
    assert p2.grad is None and torch.equal(a2.grad, torch.ones(4, dtype=D))


# ----------------------------------------------------------------------------- bias series


@pytest.mark.parametrize("lam", [0.5, 0.875, 1.0])
@pytest.mark.parametrize("t0,steps", [(0, 6), (3, 4), (9, 1)])
def test_bias_series_is_the_geometric_sum(lam, t0, steps):
    like = torch.zeros((), dtype=D)
    c = core.bias_series(t0, steps, lam, like=like)
    ref = torch.tensor([sum(lam ** k for k in range(t + 1)) for t in range(t0, t0 + steps)],
                       dtype=D)
    assert c.shape == (steps,) and c.dtype == D
    torch.testing.assert_close(c, ref, rtol=1e-14, atol=0)
    if lam == 1.0:
        assert c.tolist() == [float(t + 1) for t in range(t0, t0 + steps)]


def test_bias_series_takes_a_learnable_decay_detached_and_the_dtype_of_like():
    lam = torch.tensor(0.25, dtype=D, requires_grad=True)
    c = core.bias_series(0, 3, lam, like=torch.zeros(2, dtype=torch.float32))
    assert c.dtype == torch.float32 and not c.requires_grad
    torch.testing.assert_close(c, torch.tensor([1.0, 1.25, 1.3125]), rtol=0, atol=0)


def test_bias_series_is_what_an_accumulated_bias_is():
    """Y[t] = W â_in[t] + b c[t]: accumulating W s + b over time gives the bias times c[t]."""
    lam = 0.8
    b = torch.randn(5, dtype=D, generator=gen(7))
    acc = core.accumulate(b.expand(T, 5), lam)
    c = core.bias_series(0, T, lam, like=b)
    torch.testing.assert_close(acc, c[:, None] * b, rtol=1e-14, atol=1e-14)


# ----------------------------------------------------------------------------- re-accumulation


@pytest.mark.parametrize("lam_in,lam_out", [(0.5, 0.9), (0.9, 0.5), (1.0, 0.75), (0.6, 0.6)])
def test_reaccumulate_turns_a_lambda_accumulation_into_a_lambda_prime_one(lam_in, lam_out):
    x = torch.randn(T, 4, 3, dtype=D, generator=gen(8))
    z = brute_accumulate(x, lam_in)
    y, out = None, []
    for t in range(T):
        y = core.reaccumulate_step(z[t], z[t - 1] if t else None, y, lam_in, lam_out)
        out.append(y)
    torch.testing.assert_close(torch.stack(out), brute_accumulate(x, lam_out),
                               rtol=1e-12, atol=1e-12)
    if lam_in == lam_out:  # nothing to do: exactly the input
        assert all(torch.equal(o, zt) for o, zt in zip(out, z))


def test_reaccumulate_commutes_with_a_linear_map():
    """A layer re-accumulates its already transformed input: W z is a λ-accumulation of W x."""
    x = torch.randn(T, 6, dtype=D, generator=gen(9))
    w = torch.randn(3, 6, dtype=D, generator=gen(10))
    wz = brute_accumulate(x, 0.5) @ w.T
    y, out = None, []
    for t in range(T):
        y = core.reaccumulate_step(wz[t], wz[t - 1] if t else None, y, 0.5, 0.95)
        out.append(y)
    torch.testing.assert_close(torch.stack(out), brute_accumulate(x @ w.T, 0.95),
                               rtol=1e-12, atol=1e-12)


def test_reaccumulate_history_is_a_constant():
    z = torch.randn(4, dtype=D, generator=gen(11), requires_grad=True)
    z_prev = torch.randn(4, dtype=D, generator=gen(12), requires_grad=True)
    y_prev = torch.randn(4, dtype=D, generator=gen(13), requires_grad=True)
    core.reaccumulate_step(z, z_prev, y_prev, 0.5, 0.9).sum().backward()
    assert torch.equal(z.grad, torch.ones(4, dtype=D))
    assert z_prev.grad is None and y_prev.grad is None
    assert core.reaccumulate_step(z, None, None, 0.5, 0.9) is z


# ----------------------------------------------------------------------------- the neuron


@pytest.mark.parametrize("lam,theta", [(0.5, 1.0), (0.9, 0.7), (1.0, 1.3)])
def test_lif_spike_is_the_soft_reset_lif_unrolled(lam, theta):
    current = firing_current(seed=14, high=1.2 * theta)
    s_ref, u_ref, _ = lif_reference(current, lam, theta)
    assert_fires(s_ref)
    Y = brute_accumulate(current, lam)  # Y[t] = Σ_k λ^k I[t−k]
    acc, ss, us = None, [], []
    for t in range(T):
        s, u = core.lif_spike(Y[t], acc, lam, theta, core.heaviside)
        ss.append(s), us.append(u)
        acc = core.accumulate_step(s, acc, lam)
    s, u = torch.stack(ss), torch.stack(us)
    assert torch.equal(s, s_ref)
    torch.testing.assert_close(u, u_ref, rtol=1e-12, atol=1e-12)
    # the closed form u[t] = Y[t] − θ λ â[t−1], â from the reference spikes
    a_ref = brute_accumulate(s_ref, lam)
    closed = Y - theta * lam * torch.cat([torch.zeros_like(a_ref[:1]), a_ref[:-1]])
    torch.testing.assert_close(u, closed, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kappa", [1.0, 0.0])
def test_lif_spike_reset_decay(kappa):
    """κ = 1: the reset subtracts θ s[t−1] without the decay (snnTorch reset_delay=True);
    κ = 0: no reset."""
    lam, theta = 0.8, 1.0
    current = firing_current(seed=15, high=0.9)
    s_ref, u_ref, _ = lif_reference(current, lam, theta, kappa=kappa)
    assert_fires(s_ref)
    Y = brute_accumulate(current, lam)
    acc, ss, us = None, [], []
    for t in range(T):
        s, u = core.lif_spike(Y[t], acc, lam, theta, core.heaviside, reset_decay=kappa)
        ss.append(s), us.append(u)
        acc = core.accumulate_step(s, acc, lam)
    assert torch.equal(torch.stack(ss), s_ref)
    torch.testing.assert_close(torch.stack(us), u_ref, rtol=1e-12, atol=1e-12)
    # and it differs from the default κ = λ on this input
    s_default, _, _ = lif_reference(current, lam, theta)
    assert not torch.equal(s_default, s_ref)


class _Surrogate(torch.autograd.Function):
    """H(x) forward, the derivative of sigmoid(4x) backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        sg = torch.sigmoid(4 * x)
        return g * 4 * sg * (1 - sg)


def test_lif_spike_backward_is_the_surrogate_at_u_minus_theta_and_the_history_is_constant():
    lam, theta = 0.5, 0.8
    y = torch.randn(10, dtype=D, generator=gen(16)).add_(1.2).requires_grad_()
    acc_prev = torch.rand(10, dtype=D, generator=gen(17)).requires_grad_()
    s, u = core.lif_spike(y, acc_prev, lam, theta, _Surrogate.apply)
    s.sum().backward()
    x = (y - theta * lam * acc_prev).detach() - theta
    sg = torch.sigmoid(4 * x)
    torch.testing.assert_close(y.grad, 4 * sg * (1 - sg), rtol=1e-14, atol=0)
    assert acc_prev.grad is None
    assert torch.equal(s, (x >= 0).to(D)) and bool(s.any()) and not bool(s.all())
    torch.testing.assert_close(u.detach(), x + theta, rtol=0, atol=1e-15)


def test_heaviside_fires_at_the_threshold():
    x = torch.tensor([-1e-300, 0.0, 1e-300, 2.0], dtype=D)
    assert core.heaviside(x).tolist() == [0.0, 1.0, 1.0, 1.0]
    assert core.heaviside(x.float()).dtype == torch.float32


def test_saf_e_step_returns_the_accumulation_and_each_step_stands_alone():
    lam, theta = 0.75, 1.0
    current = firing_current(seed=18)
    s_ref, u_ref, _ = lif_reference(current, lam, theta)
    assert_fires(s_ref)
    Y = brute_accumulate(current, lam).requires_grad_()
    acc, accs, us = None, [], []
    for t in range(T):
        a, u = core.saf_e_step(Y[t], acc, lam, theta, _Surrogate.apply)
        accs.append(a), us.append(u)
        acc = a
    torch.testing.assert_close(torch.stack(accs).detach(), brute_accumulate(s_ref, lam),
                               rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(torch.stack(us).detach(), u_ref, rtol=1e-12, atol=1e-12)
    # the graph of the last step reaches Y[T−1] only, though acc_prev was passed with graph
    (g,) = torch.autograd.grad(accs[-1].sum(), Y)
    assert g[:-1].abs().sum() == 0 and g[-1].abs().sum() > 0


# ----------------------------------------------------------------------------- SAF-F


@pytest.mark.parametrize("lam,theta", [(0.5, 1.0), (0.9, 0.7)])
def test_spike_representation_bounds_the_accumulation(lam, theta):
    """min(max(Y, 0)/θ, c[t]); for input currents in [0, θ) the membrane after reset v stays in
    [0, θ), and θ â[t] = Y[t] − v[t] gives rep − 1 < â[t] ≤ rep."""
    current = firing_current((T, 200), seed=19, high=theta * 0.999)
    s, _, v = lif_reference(current, lam, theta)
    assert_fires(s)
    Y = brute_accumulate(current, lam)
    a = brute_accumulate(s, lam)
    c = torch.tensor([sum(lam ** k for k in range(t + 1)) for t in range(T)], dtype=D)
    torch.testing.assert_close(theta * a, Y - v, rtol=0, atol=1e-12)
    rep = torch.stack([core.spike_representation(Y[t], theta, c[t]) for t in range(T)])
    assert bool((a <= rep + 1e-12).all()) and bool((a > rep - 1).all())
    assert bool((rep >= 0).all()) and bool((rep <= c[:, None]).all())
    # the clamp at both ends, against the brute-force definition
    y = torch.tensor([-2.0, 0.0, 0.3, theta * 2.5, 100.0], dtype=D)
    ref = [min(max(float(v), 0.0) / theta, 2.5) for v in y]
    torch.testing.assert_close(core.spike_representation(y, theta, 2.5),
                               torch.tensor(ref, dtype=D), rtol=1e-15, atol=0)


@pytest.mark.parametrize("theta", [1.0, 0.7])
def test_saf_f_step_forward_is_saf_e_backward_is_the_clamp_indicator(theta):
    lam, t = 0.5, 4
    c = sum(lam ** k for k in range(t + 1))
    current = firing_current((T, 300), seed=20, low=-0.5, high=1.5 * theta)
    s_ref, _, _ = lif_reference(current, lam, theta)
    assert_fires(s_ref)
    Y = brute_accumulate(current, lam)
    acc_prev = brute_accumulate(s_ref, lam)[t - 1].clone().requires_grad_()
    y = Y[t].clone().requires_grad_()
    acc, u = core.saf_f_step(y, acc_prev, lam, theta, c)
    acc_e, u_e = core.saf_e_step(Y[t], acc_prev.detach(), lam, theta, core.heaviside)
    assert torch.equal(acc.detach(), acc_e) and torch.equal(u, u_e)
    torch.testing.assert_close(acc.detach(), brute_accumulate(s_ref, lam)[t], rtol=0,
                               atol=1e-13)
    acc.sum().backward()
    inside = (y.detach() > 0) & (y.detach() < theta * c)
    assert bool(inside.any()) and bool((~inside).any()), "both sides of the clamp are tested"
    torch.testing.assert_close(y.grad, inside.to(D) / theta, rtol=0, atol=0)
    assert acc_prev.grad is None


def test_saf_f_step_spike_fn_sets_the_heaviside_at_the_threshold():
    theta = 1.0
    y = torch.tensor([theta, 0.5], dtype=D)
    acc, _ = core.saf_f_step(y, None, 0.5, theta, 1.0)
    assert acc.tolist() == [1.0, 0.0]  # default H(x) = [x >= 0]
    acc, _ = core.saf_f_step(y, None, 0.5, theta, 1.0, spike_fn=lambda x: (x > 0).to(x.dtype))
    assert acc.tolist() == [0.0, 0.0]


# ----------------------------------------------------------------------------- the decay's gradient


def _membrane_at(current, lam, theta, t, decay_input, history_lam):
    """u[t] as a function of λ with the history v[t−1] (computed with ``history_lam``) fixed."""
    v_prev = torch.zeros_like(current[0])
    if t:
        v_prev = lif_reference(current[:t], history_lam, theta, decay_input=decay_input)[2][-1]
    inp = (1 - lam) * current[t] if decay_input else current[t]
    return lam * v_prev + inp


@pytest.mark.parametrize("decay_input", [False, True])
@pytest.mark.parametrize("t", [0, 1, 5])
def test_decay_gradient_term_is_the_history_detached_derivative_of_the_membrane(decay_input, t):
    lam, theta, h = 0.6, 0.8, 1e-6
    current = firing_current((T, 50), seed=21, high=1.6 if decay_input else 0.9)
    s, _, _ = lif_reference(current, lam, theta, decay_input=decay_input)
    assert_fires(s)
    fd = (_membrane_at(current, lam + h, theta, t, decay_input, lam)
          - _membrane_at(current, lam - h, theta, t, decay_input, lam)) / (2 * h)
    Y = brute_accumulate(current, lam)  # the unscaled accumulated current
    a = brute_accumulate(s, lam)
    term = core.decay_gradient_term(Y[t], Y[t - 1] if t else None, a[t - 1] if t else None,
                                    theta, decay_input)
    torch.testing.assert_close(term, fd, rtol=1e-8, atol=1e-8)
    if t and not decay_input:
        assert term.abs().sum() > 0


def test_decay_gradient_term_uses_a_kept_membrane_and_returns_it_detached():
    """snnTorch keeps mem[t−1]: mem[t] = β mem[t−1] + I[t] − θ H(mem[t−1] − θ), so with the
    history fixed ∂mem[t]/∂β = mem[t−1], whatever Y and â say."""
    theta, h, beta = 1.0, 1e-6, 0.85
    mem_prev = torch.randn(20, dtype=D, generator=gen(22)).add_(0.8).requires_grad_()
    current = torch.randn(20, dtype=D, generator=gen(23))
    reset = (mem_prev.detach() >= theta).to(D)
    assert bool(reset.any()) and not bool(reset.all())

    def mem(b):
        return b * mem_prev.detach() + current - theta * reset

    fd = (mem(beta + h) - mem(beta - h)) / (2 * h)
    junk = torch.full((20,), 7.0, dtype=D)
    term = core.decay_gradient_term(junk, junk, junk, theta, False, membrane=mem_prev)
    torch.testing.assert_close(term, fd, rtol=1e-8, atol=1e-8)
    assert not term.requires_grad


def test_decay_gradient_term_gives_saf_the_gradient_of_the_learnable_decay():
    """How the neuron uses it: u + (λ − λ.detach())·term has ∂u/∂λ = term while the forward
    stays the closed form. Against autograd through the hand-written step with v[t−1] fixed."""
    theta, t = 1.0, 3
    lam = torch.tensor(0.7, dtype=D, requires_grad=True)
    current = firing_current((T, 30), seed=24, high=0.9)
    s, _, v = lif_reference(current, 0.7, theta)
    assert_fires(s)
    u_ref = lam * v[t - 1] + current[t]  # v[t−1] a constant
    (g_ref,) = torch.autograd.grad(u_ref.sum(), lam)
    Y = brute_accumulate(current, 0.7)
    a = brute_accumulate(s, 0.7)
    _, u = core.lif_spike(Y[t], a[t - 1], 0.7, theta, core.heaviside)
    u = u + (lam - lam.detach()) * core.decay_gradient_term(Y[t], Y[t - 1], a[t - 1], theta,
                                                            False)
    torch.testing.assert_close(u.detach(), u_ref.detach(), rtol=0, atol=1e-12)
    (g,) = torch.autograd.grad(u.sum(), lam)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)
    assert g_ref.abs() > 0
