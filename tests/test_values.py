"""saf_plugin.runtime.values on its own, outside any model's forward: the bias series c[t], an
operand accumulated for a linear map (step modes 's' and 'm', a restart mid-sequence), an
accumulation de-accumulated to its per-step values (through shape operations too), a constant
scaled by c[t], and the accumulation dtype. The oracle is saf_plugin.core (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from saf_plugin import core
from saf_plugin.dataflow import ACC, STEP, Rep, Site
from saf_plugin.runtime import Runtime

neuron = pytest.importorskip("spikingjelly.activation_based.neuron")

LAM = 0.5


def runtime(step_mode: str = "s", mode: str = "E", accumulate=None) -> Runtime:
    """A runtime of a Linear-LIF model, in a step of its own (no forward runs)."""
    from saf_plugin import registry

    registry.load_adapters()
    lif = neuron.LIFNode(tau=2.0, v_reset=None)
    rt = Runtime(nn.Sequential(nn.Linear(3, 4), lif), mode, [lif],
                 [registry.lookup(lif).neuron], accumulate)
    rt.step_mode, rt.call, rt.t, rt.steps = step_mode, 1, 0, 1
    return rt


def at(rt: Runtime, t: int) -> None:
    """Step mode 's': the runtime's next call is step t."""
    rt.call, rt.t = rt.call + 1, t


def test_series_is_the_bias_series_from_where_the_accumulation_started():
    rt = runtime()
    like = torch.zeros((), dtype=torch.float64)
    at(rt, 3)
    assert rt.series(LAM, like).tolist() == [1 + LAM + LAM ** 2 + LAM ** 3]
    assert rt.series(LAM, like, since=2).tolist() == [1 + LAM]
    assert rt.series(LAM, like, t=0).tolist() == [1.0]
    rt.step_mode, rt.t, rt.steps = "m", 0, 5
    torch.testing.assert_close(rt.series(LAM, like), core.bias_series(0, 5, LAM, like=like))
    rt.t = 5  # the next call of a sequence: rows 5..9, one tensor that grows
    torch.testing.assert_close(rt.series(LAM, like), core.bias_series(5, 5, LAM, like=like))
    assert rt.series(1.0, like).tolist() == [6.0, 7.0, 8.0, 9.0, 10.0]  # IF: c[t] = t + 1


def test_accumulated_in_step_mode_s_follows_the_recurrence_and_restarts_at_since():
    rt = runtime()
    site = Site(("linear", None), "here")
    v = torch.rand(6, 2, 3, dtype=torch.float64)
    ref = core.accumulate(v, LAM)
    for t in range(6):
        at(rt, t)
        x = rt.tag(v[t].clone(), STEP)
        acc, lam = rt.accumulated(x, site, lam=LAM)
        assert lam == LAM
        torch.testing.assert_close(acc, ref[t], rtol=0, atol=1e-12)
    at(rt, 6)  # an operand whose accumulation starts afresh at step 6 (a neuron reset)
    acc, _ = rt.accumulated(rt.tag(v[0].clone(), STEP), site, lam=LAM, since=6)
    torch.testing.assert_close(acc, v[0])
    assert site.in_since[0] == 6


def test_accumulated_keeps_the_gradient_of_the_step_alone():
    rt = runtime()
    site = Site(("linear", None), "here")
    v = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    for t in range(3):
        at(rt, t)
        acc, _ = rt.accumulated(rt.tag(v[t] * 1.0, STEP), site, lam=LAM)
    acc.sum().backward()  # â[t−1] is a constant: only v[2] gets a gradient
    assert v.grad[:2].abs().sum() == 0 and torch.all(v.grad[2] == 1)


def test_accumulated_in_step_mode_m_runs_along_the_time_layout():
    rt = runtime("m")
    T, B = 4, 3
    site = Site(("linear", None), "here")
    v = torch.rand(T, B, 5, dtype=torch.float64)
    rt.steps = T
    x = rt.tag(v.clone(), STEP, time=(0, 1))
    acc, _ = rt.accumulated(x, site, lam=LAM)
    torch.testing.assert_close(acc, core.accumulate(v, LAM), rtol=0, atol=1e-12)
    folded = rt.tag(v.reshape(T * B, 5).clone(), STEP, time=(0, B))  # [T·B, ...]
    acc, _ = rt.accumulated(folded, Site(("linear", None), "there"), lam=LAM)
    torch.testing.assert_close(acc.view(T, B, 5), core.accumulate(v, LAM), rtol=0, atol=1e-12)
    at(rt, T)  # the next call continues the sequence from the last accumulation
    rt.t = T
    acc2, _ = rt.accumulated(rt.tag(v.clone(), STEP, time=(0, 1)), site, lam=LAM)
    ref = core.accumulate(torch.cat([v, v]), LAM)[T:]
    torch.testing.assert_close(acc2, ref, rtol=0, atol=1e-12)


def test_step_value_de_accumulates_in_step_mode_s():
    rt = runtime()
    site = Site(("linear", None), "here")
    site.needs_prev = False
    v = torch.rand(4, 3, dtype=torch.float64)
    acc = core.accumulate(v, LAM)
    for t in range(4):
        rep = Rep(ACC, rt.call, t, decay=LAM, prev=None if t == 0 else acc[t - 1], site=site)
        torch.testing.assert_close(rt.step_value(acc[t], rep), v[t], rtol=0, atol=1e-12)
    assert site.needs_prev, "a de-accumulated site keeps its previous output"
    chained = Rep(ACC, rt.call, 3, decay=LAM, prev=acc[2], site=site, base=acc[3],
                  chain=((torch.Tensor.flip, (0,), {}),))  # a shape operation after the map
    torch.testing.assert_close(rt.step_value(acc[3].flip(0), chained), v[3].flip(0))


def test_step_value_de_accumulates_in_step_mode_m_and_refuses_a_lost_previous_step():
    rt = runtime("m")
    T = 5
    v = torch.rand(2 * T, 3, dtype=torch.float64)
    acc = core.accumulate(v, LAM)
    site = Site(("linear", None), "here")
    site.time = (0, 1)
    rt.steps, rt.t = T, T
    rep = Rep(ACC, rt.call, T, decay=LAM, prev=acc[T - 1:T], site=site)  # [inner, ...]
    torch.testing.assert_close(rt.step_value(acc[T:], rep), v[T:], rtol=0, atol=1e-12)
    lost = Rep(ACC, rt.call, T, decay=LAM, prev=None, site=site)
    with pytest.raises(Exception, match="previous step was not kept"):
        rt.step_value(acc[T:], lost)


@pytest.mark.parametrize("mode", ["E", "F"])
def test_shift_scales_a_constant_by_c_t(mode):
    """out = A â + β becomes A â + β c[t]; SAF-E's added part carries no gradient."""
    rt = runtime(mode=mode)
    beta = torch.rand(3, dtype=torch.float64, requires_grad=True)
    at(rt, 2)
    out = torch.zeros(2, 3, dtype=torch.float64) + beta
    shifted = rt._shift(out, beta, LAM)
    c = 1 + LAM + LAM ** 2
    torch.testing.assert_close(shifted, (beta * c).expand(2, 3).detach())
    shifted.sum().backward()
    expected = 2.0 if mode == "E" else 2.0 * c  # SAF-E: δ; SAF-F: c[t] δ
    torch.testing.assert_close(beta.grad, torch.full((3,), expected, dtype=torch.float64))
    at(rt, 0)
    assert rt._shift(out, beta, LAM) is out  # c[0] = 1
    rt.step_mode, rt.t, rt.steps = "m", 0, 3
    rows = torch.zeros(3, 2, 3, dtype=torch.float64)
    got = rt._shift(rows, beta.detach(), LAM, time=(0, 1))
    c = core.bias_series(0, 3, LAM, like=rows)
    torch.testing.assert_close(got, ((c.view(3, 1, 1) - 1) * beta.detach()).expand(3, 2, 3))


def test_high_and_low_are_the_accumulation_dtype_and_the_models():
    rt = runtime(accumulate=torch.float64)
    rt.dtype = torch.float32
    x = torch.rand(3)
    assert rt.high(x).dtype == torch.float64 and rt.low(rt.high(x)).dtype == torch.float32
    assert rt.high(torch.arange(3)).dtype == torch.int64  # integers stay
    assert rt._consts([x, None])[0].dtype == torch.float64
    plain = runtime()
    assert plain.high(x) is x and plain.low(x) is x
