"""The data-flow engine (saf_plugin/runtime.py, routes.py, dataflow.py) through small SpikingJelly
models in float64 (docs/theory.md, "When SAF is exact: the data flow"): the routes check(net, x)
reports, a forward that loops over time itself, the refusals (a neuron object called twice in one
step, a linear map whose weights change from step to step, operations that change from step to
step), and the tags every tensor carries (STEP / SPIKE / ACC; read from the runtime's table only
here, where no public behaviour shows them).

Thresholds and gains are chosen so that every neuron layer fires (asserted): silent layers would
make the comparisons vacuous."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import saf_plugin
import sj_models as M
from exactness import routes
from saf_plugin import SAFIncompatibleError, SAFStateError, core
from saf_plugin.dataflow import ACC, SPIKE, STEP

T, B = 6, 4


def lif(tau=2.0, v_threshold=1.0, **kw):
    return neuron.LIFNode(tau=tau, v_reset=None, v_threshold=v_threshold, **kw)


def assert_fires(net, fn):
    rates = M.spike_counts(net, fn)
    functional.reset_net(net)  # (a membrane with graph cannot be deep-copied, e.g. by check)
    assert rates and all(0 < r < 1 for r in rates.values()), rates


def converted(net, mode="E"):
    functional.reset_net(net)  # (a plain run leaves a membrane with graph: no deepcopy)
    return saf_plugin.set_saf(copy.deepcopy(net), mode)


# ----------------------------------------------------------------------------- routes


def layered(step_mode="s"):
    torch.manual_seed(0)
    net = nn.Sequential(
        layer.Conv2d(1, 4, 3, padding=1), lif(), layer.MaxPool2d(2), layer.Flatten(),
        layer.Linear(64, 16), nn.ReLU(), layer.Linear(16, 8), lif(), layer.Linear(8, 3))
    functional.set_step_mode(net, step_mode)
    return M.strengthen(net, gain=3.0, bias=0.5)


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_check_routes_linear_maps_on_accumulations_and_the_rest_per_step(float64, step_mode):
    net = layered(step_mode)
    x = torch.rand(T, B, 1, 8, 8)
    assert_fires(net, lambda: M.run(net, x, step_mode))
    r = routes(saf_plugin.check(net, x if step_mode == "m" else x[0]))
    assert r == {"conv2d": {"on accumulations"}, "linear": {"on accumulations"},
                 "max_pool2d": {"per step"}, "relu": {"per step"}}, r
    ref = M.run(net, x, step_mode)
    torch.testing.assert_close(M.run(converted(net), x, step_mode), ref, rtol=0, atol=1e-13)


class Functional(nn.Module):
    """Functional calls and tensor methods in forward, the neurons of different decays."""

    def __init__(self):
        super().__init__()
        self.conv = layer.Conv2d(1, 4, 3, padding=1)
        self.sn1 = lif(2.0)
        self.fc1 = layer.Linear(64, 16)
        self.fc2 = layer.Linear(16, 8)
        self.sn2 = lif(4.0, 0.7)
        self.fc3 = layer.Linear(8, 3)

    def forward(self, x):
        h = F.max_pool2d(self.sn1(self.conv(x)), 2).flatten(1)
        h = torch.relu(self.fc1(h)) * 0.5 + F.avg_pool1d(h[:, None], 4)[:, 0] @ torch.ones(16, 16)
        return self.fc3(self.sn2(self.fc2(h) - 0.1))


def test_functional_calls_are_routed_and_exact(float64):
    torch.manual_seed(1)
    net = M.strengthen(Functional(), gain=3.0, bias=0.5)
    x = torch.rand(T, B, 1, 8, 8)
    assert_fires(net, lambda: M.run(net, x, "s"))
    r = routes(saf_plugin.check(net, x[0]))
    assert r["max_pool2d"] == r["relu"] == {"per step"}, r
    for op in ("conv2d", "linear", "sub"):
        assert r[op] == {"on accumulations"}, (op, r)
    for op in ("avg_pool1d", "matmul", "mul", "add"):  # no parameters, on per-step values
        assert r[op] == {"on per-step values"}, (op, r)
    torch.testing.assert_close(M.run(converted(net), x, "s"), M.run(net, x, "s"),
                               rtol=0, atol=1e-13)


# ----------------------------------------------------------------------------- time in forward


class Loop(nn.Module):
    """Step mode 's' neurons, the forward loops over the time steps of a [T, B, ...] input."""

    def __init__(self, readout):
        super().__init__()
        self.readout = readout
        self.fc1, self.sn1 = layer.Linear(6, 12), lif(2.0, 0.5)
        self.fc2, self.sn2 = layer.Linear(12, 8), lif(2.0, 0.3)
        self.out = layer.Linear(8, 3)

    def forward(self, x_seq):
        outs = []
        for t in range(x_seq.shape[0]):
            s = self.sn2(self.fc2(self.sn1(self.fc1(x_seq[t]))))
            outs.append(self.out(s) if self.readout else s)
        return torch.stack(outs)


def _loop(readout):
    torch.manual_seed(0)
    net = M.strengthen(Loop(readout), gain=2.0, bias=0.5)
    x = torch.rand(T, B, 6)
    assert_fires(net, lambda: (functional.reset_net(net), net(x)))
    functional.reset_net(net)
    ref = net(x)
    return net, x, ref


def test_a_forward_that_loops_over_time_is_exact(float64):
    net, x, ref = _loop(readout=False)
    saf = converted(net, "E")
    for _ in range(2):  # reset_net between: the same sequence again
        functional.reset_net(saf)
        assert torch.equal(saf(x), ref)
    assert saf._saf_rt.t == T - 1, "the clock advanced once per loop iteration"
    saf_f = converted(net, "F")
    functional.reset_net(saf_f)
    c = core.bias_series(0, T, 0.5, like=ref)
    expected = core.accumulate(ref, 0.5) / c.view(-1, 1, 1)  # â[t]/c[t]
    torch.testing.assert_close(saf_f(x), expected, rtol=0, atol=1e-13)


def test_a_forward_that_loops_over_time_and_stacks_readouts_is_exact_from_the_first_call(float64):
    net, x, ref = _loop(readout=True)
    saf = converted(net, "E")
    functional.reset_net(saf)
    torch.testing.assert_close(saf(x), ref, rtol=0, atol=1e-13)


def test_a_forward_that_loops_over_time_and_stacks_readouts_is_exact_after_the_first_call(
        float64):
    net, x, ref = _loop(readout=True)
    saf = converted(net, "E")
    functional.reset_net(saf)
    for _ in range(2):
        functional.reset_net(saf)
        torch.testing.assert_close(saf(x), ref, rtol=0, atol=1e-13)
    saf_f = converted(net, "F")  # SAF-F collects the spike representations O[t]/c[t]
    functional.reset_net(saf_f)
    c = core.bias_series(0, T, 0.5, like=ref)
    torch.testing.assert_close(saf_f(x), core.accumulate(ref, 0.5) / c.view(-1, 1, 1),
                               rtol=0, atol=1e-13)


# ----------------------------------------------------------------------------- refusals


class SharedNeuron(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = layer.Linear(4, 8), layer.Linear(8, 8), layer.Linear(8, 2)
        self.sn = lif()

    def forward(self, x):
        return self.out(self.sn(self.fc2(self.sn(self.fc1(x)))))


def test_a_neuron_object_called_twice_in_one_step_is_refused_naming_it(float64):
    net = SharedNeuron()
    x = torch.rand(B, 4)
    finding = next(f for f in saf_plugin.check(net, x) if f.status != "exact")
    assert finding.path == "sn" and "ran twice in one time step" in finding.reason
    assert "its own neuron object" in finding.fix
    saf_plugin.set_saf(net, "E")  # only the data flow shows it: refused at the first call
    functional.reset_net(net)
    with pytest.raises(SAFIncompatibleError, match=r"\n  sn \((SAF)?LIFNode\): unsupported: "
                                                   r"this neuron object ran twice") as err:
        net(x)
    assert [f.path for f in err.value.findings] == ["sn"]
    assert saf_plugin.saf_mode(net) is None and type(net) is SharedNeuron


class WeightPerStep(nn.Module):
    """One Linear per time step (as snntorch.BatchNormTT does with BatchNorm)."""

    def __init__(self):
        super().__init__()
        self.fcs = nn.ModuleList(layer.Linear(4, 8) for _ in range(T))
        self.sn, self.out = lif(), layer.Linear(8, 2)
        self.t = 0

    def forward(self, x):
        h = self.fcs[self.t](x)
        self.t += 1
        return self.out(self.sn(h))


def test_a_linear_map_whose_weights_change_between_steps_is_refused(float64):
    net = WeightPerStep()
    saf_plugin.set_saf(net, "E")
    functional.reset_net(net)
    net(torch.rand(B, 4))  # step 0 learns the sites
    with pytest.raises(SAFIncompatibleError, match="other constants \\(weights, or a number "
                                                   "read at every step\\) than in the step "
                                                   "before") as err:
        net(torch.rand(B, 4))
    (finding,) = err.value.findings
    assert finding.path == "fcs.1" and finding.module == "linear"
    assert saf_plugin.saf_mode(net) is None


class Branchy(nn.Module):
    """Data-dependent control flow: the operation after the first neuron alternates."""

    def __init__(self):
        super().__init__()
        self.fc1, self.sn1, self.fc2 = layer.Linear(4, 8), lif(), layer.Linear(8, 2)
        self.calls = 0

    def forward(self, x):
        h = self.sn1(self.fc1(x))
        h = h * 2.0 if self.calls % 2 == 0 else h + 1.0
        self.calls += 1
        return self.fc2(h)


def test_operations_that_change_between_steps_are_a_state_error(float64):
    net = Branchy()
    saf_plugin.set_saf(net, "E")
    functional.reset_net(net)
    net(torch.rand(B, 4))
    with pytest.raises(SAFStateError, match="data-dependent control flow"):
        net(torch.rand(B, 4))


def test_weights_updated_in_place_between_steps_are_not_refused(float64):
    """Online training (an optimizer step after every step) keeps the same weight objects: SAF
    runs on, with the new weights (docs/theory.md: its forward then drifts from OTTT_O's)."""
    torch.manual_seed(0)
    net = M.strengthen(M.mlp(), gain=2.0, bias=0.5)
    saf_plugin.set_saf(net, "E")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    functional.reset_net(net)
    w0 = net[1].weight.detach().clone()
    for x in torch.rand(3, B, 12):
        opt.zero_grad()
        net(x).pow(2).sum().backward()
        opt.step()
    assert not torch.equal(net[1].weight, w0) and saf_plugin.saf_mode(net) == "E"


# ----------------------------------------------------------------------------- tags


class Tagged(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.sn1 = layer.Linear(6, 12), lif(2.0, 0.6)
        self.fc2, self.act = layer.Linear(12, 10), nn.ReLU()
        self.fc3, self.sn2 = layer.Linear(10, 8), lif(4.0, 0.6)
        self.fc4 = layer.Linear(8, 3)

    def forward(self, x):
        return self.fc4(self.sn2(self.fc3(self.act(self.fc2(self.sn1(self.fc1(x)))))))


def test_tags_of_the_data_flow(float64):
    """What each tensor is to the engine, against the plain model's per-step values: a linear
    map's output is the accumulation of the plain output (with the decay of the neuron it
    reaches: OTTT's trace), a neuron returns the plain spikes tagged with their accumulation, a
    per-step operation the plain per-step value, and the model output is de-accumulated."""
    torch.manual_seed(2)
    net = M.strengthen(Tagged(), gain=2.5, bias=0.5)
    x = torch.rand(T, B, 6)
    names = ("fc1", "sn1", "fc2", "act", "fc3", "sn2", "fc4")
    assert_fires(net, lambda: M.run(net, x, "s"))
    plain = {n: [] for n in names}
    hooks = [getattr(net, n).register_forward_hook(
        lambda m, i, o, n=n: plain[n].append(o.detach())) for n in names]
    ref = M.run(net, x, "s")
    for h in hooks:
        h.remove()
    plain = {n: torch.stack(v) for n, v in plain.items()}

    saf = converted(net, "E")
    rt = saf._saf_rt
    seen = {n: [] for n in names}
    for n in names:  # the tensor itself and its tag, read while the step runs
        getattr(saf, n).register_forward_hook(
            lambda m, i, o, n=n: seen[n].append((o, rt.reps.get(o))))
    out = M.run(saf, x, "s")
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-13)

    decays = {"fc1": 0.5, "fc2": 0.5, "fc3": 0.75, "fc4": 0.75}
    for t in range(T):
        for n, lam in decays.items():
            o, rep = seen[n][t]
            assert rep.kind == ACC and rep.seq == t, (n, t, rep)
            if t:  # (at t = 0 an accumulation is the value, whatever its decay)
                assert rep.decay == lam, (n, t, rep.decay)
            torch.testing.assert_close(o, core.accumulate(plain[n], lam)[t], rtol=0,
                                       atol=1e-12, msg=lambda m: f"{n}[{t}]: {m}")
        for n, lam in (("sn1", 0.5), ("sn2", 0.75)):
            o, rep = seen[n][t]
            assert rep.kind == SPIKE and rep.decay == lam
            assert torch.equal(o, plain[n][t]), "a neuron returns the real spikes"
            acc = o if rep.acc is None else rep.acc
            assert (rep.acc is None) == (t == 0)
            torch.testing.assert_close(acc, core.accumulate(plain[n], lam)[t], rtol=0,
                                       atol=1e-12)
        o, rep = seen["act"][t]
        assert rep.kind == STEP
        torch.testing.assert_close(o, plain["act"][t], rtol=0, atol=1e-12)
    assert any(float(v.abs().sum()) > 0 for v in plain["fc4"])


def test_the_input_is_a_per_step_value_and_constants_are_untagged(float64):
    net = M.strengthen(M.mlp(), gain=2.0, bias=0.5)
    saf = converted(net, "E")
    rt = saf._saf_rt
    got = {}

    def pre(m, args):
        got["in"] = rt.reps.get(args[0])

    saf[0].register_forward_pre_hook(pre)
    functional.reset_net(saf)
    x = torch.rand(B, 3, 4)
    saf(x)
    assert got["in"].kind == STEP and got["in"].raw
    assert rt.reps.get(x) is not None and rt.reps.get(saf[1].weight) is None


def test_check_prints_the_plan_as_a_table(float64):
    """``print(check(net, x))``: one row per neuron and per operation of one call, in order,
    each with its route (the table ``saf check`` prints)."""
    net = layered("s")
    x = torch.rand(B, 1, 8, 8)
    found = saf_plugin.check(net, x)
    text = str(found)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["path", "module", "status", "reason"]
    assert len(lines) == len(found) + 2  # the header and its rule
    for row, f in zip(lines[2:], found):
        assert f" {f.module} " in row and f.reason in row and "site-packages" not in row, row
    assert [f.module for f in found[-6:]] == ["conv2d", "max_pool2d", "linear", "relu",
                                              "linear", "linear"]
    assert "on accumulations" in lines[-6] and "per step" in lines[-5], text
