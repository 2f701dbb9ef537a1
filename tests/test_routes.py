"""saf_plugin.runtime.routes and the routes it dispatches to, outside any model's forward: the
route table (one route per operation, filled by the ``route`` decorator), what ``dispatch``
does with one operation on tagged and untagged tensors, and the time layout the shape and
per-step routes give their results in step mode 'm'."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from saf_plugin import dataflow
from saf_plugin.dataflow import ACC, SPIKE, STEP
from saf_plugin.runtime import ROUTES, Runtime
from saf_plugin.runtime.linear_routes import LinearRoutes
from saf_plugin.runtime.routes import PER_STEP, route
from saf_plugin.runtime.shape_routes import ShapeRoutes
from saf_plugin.runtime.step_routes import StepRoutes

neuron = pytest.importorskip("spikingjelly.activation_based.neuron")


def runtime(step_mode: str = "s", mode: str = "E") -> Runtime:
    """A runtime of a Linear-LIF model in its first step (no forward runs)."""
    from saf_plugin import registry

    registry.load_adapters()
    lif = neuron.LIFNode(tau=2.0, v_reset=None)
    rt = Runtime(nn.Sequential(nn.Linear(3, 4), lif), mode, [lif],
                 [registry.lookup(lif).neuron])
    rt.step_mode, rt.call, rt.t, rt.steps, rt.active = step_mode, 1, 0, 1, True
    rt.decay = 0.5
    return rt


# ----------------------------------------------------------------------------- the table


def owner(name: str) -> type:
    fn = ROUTES[name]
    return next(c for c in (ShapeRoutes, StepRoutes, LinearRoutes) if fn.__name__ in vars(c))


def test_every_operation_has_the_route_of_its_kind():
    for name in dataflow._SHAPE:
        assert owner(name) is ShapeRoutes and ROUTES[name].__name__ == "_shape_route", name
    for name in dataflow._DROPOUT:
        assert ROUTES[name].__name__ == "_dropout", name
    for name in ("linear", *dataflow._CONV, *dataflow._POOL, "batch_norm", "add", "sub",
                 "mul", "div", "matmul", "sum", "mean", "cat", "stack", "neg"):
        assert owner(name) is LinearRoutes, name
    for name in ("escape", "setitem", "copy_"):
        assert owner(name) is StepRoutes, name
    for name in ("relu", "sigmoid", "max_pool2d", "softmax", "exp", "layer_norm"):
        assert name not in ROUTES, f"{name} runs per step: it needs no route"


def test_routes_are_documented_and_in_place_operations_have_none_but_copy():
    for name, fn in ROUTES.items():
        assert fn.__doc__, f"the route of {name} ({fn.__qualname__}) says what it does"
        assert not name.endswith("_") or name == "copy_", name


def test_a_second_route_for_an_operation_is_refused():
    with pytest.raises(ValueError, match="has a route already"):
        route("linear")(lambda self, func, name, args, kwargs: None)
    assert ROUTES["linear"].__name__ == "_linear"
    assert repr(PER_STEP) == "PER_STEP"


# ----------------------------------------------------------------------------- dispatch


def test_untagged_operands_run_as_they_are():
    rt = runtime()
    x = torch.rand(2, 3)
    out = rt.dispatch(F.relu, (x,), {})
    assert torch.equal(out, F.relu(x)) and out not in rt.reps


def test_a_linear_map_with_trainable_weights_runs_on_the_accumulation():
    rt = runtime()
    w = nn.Parameter(torch.rand(4, 3, dtype=torch.float64))
    x = torch.rand(2, 3, dtype=torch.float64)
    y0 = rt.dispatch(F.linear, (rt.tag(x.clone(), STEP), w), {})
    assert rt.reps[y0].kind == ACC and len(rt.sites) == 1
    rt.call, rt.t, rt.op = 2, 1, 0  # the next step
    x1 = torch.rand(2, 3, dtype=torch.float64)
    y1 = rt.dispatch(F.linear, (rt.tag(x1.clone(), STEP), w), {})
    torch.testing.assert_close(y1, F.linear(0.5 * x + x1, w))  # W â[1], â[1] = λ x[0] + x[1]
    torch.testing.assert_close(rt.step_value(y1, rt.reps[y1]), F.linear(x1, w))


def test_a_map_of_a_per_step_value_without_trainable_constants_runs_on_it():
    rt = runtime()
    w = torch.rand(4, 3)
    x = rt.tag(torch.rand(2, 3), STEP)
    y = rt.dispatch(F.linear, (x, w), {})
    assert rt.reps[y].kind == STEP and not rt.sites


def test_a_non_linear_operation_runs_on_the_per_step_values():
    rt = runtime()
    site = dataflow.Site(("linear", None), "here")
    acc = torch.tensor([3.0, -1.0])
    rt.t, rt.call = 1, 2
    rep = dataflow.Rep(ACC, rt.call, 1, decay=0.5, prev=torch.tensor([2.0, 2.0]), site=site)
    rt.reps[acc] = rep  # per-step values: 3 − 1 = 2, −1 − 1 = −2
    out = rt.dispatch(F.relu, (acc,), {})
    assert out.tolist() == [2.0, 0.0] and rt.reps[out].kind == STEP


def test_a_shape_operation_keeps_what_the_tensor_is():
    rt = runtime()
    s = rt.emit(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.5, 0.5]]), 0.5)
    v = rt.dispatch(torch.Tensor.view, (s, -1), {})
    rep = rt.reps[v]
    assert rep.kind == SPIKE and rep.acc.tolist() == [1.5, 0.5]
    assert rt.dispatch(torch.Tensor.size, (s,), {}) == torch.Size([1, 2])  # no tensor out


def test_a_route_that_declines_runs_per_step():
    rt = runtime()
    x = rt.tag(torch.rand(2, 4), STEP)
    out = rt.dispatch(F.dropout, (x, 0.5, True), {})  # training: a mask per step
    assert rt.reps[out].kind == STEP
    kept = rt.dispatch(F.dropout, (x, 0.5, False), {})  # eval: a shape operation
    assert torch.equal(kept, x) and rt.reps[kept].kind == STEP


# ----------------------------------------------------------------------------- time layouts


@pytest.mark.parametrize("name, args, touches", [
    ("view", (12, 2), False),
    ("permute", (1, 0, 2), False),
    ("getitem", (0,), True),
    ("getitem", ((slice(None), 0),), False),
    ("select", (1, 0), False),
    ("select", (0, 1), True),
    ("chunk", (2, 0), True),
    ("chunk", (2, 1), False),
    ("repeat", (2, 1, 1), True),
    ("repeat", (1, 2, 1), False),
    ("expand", (4, 3, 2), False),
])
def test_a_shape_operation_touches_time_only_along_it(name, args, touches):
    rt = runtime("m")
    rt.steps = 4
    x = rt.tag(torch.rand(4, 3, 2), STEP, time=(0, 1))
    assert rt._touches_time(name, (x, *args), {}) == touches


def test_the_layout_follows_a_shape_operation():
    rt = runtime("m")
    rt.steps = 4
    x = rt.tag(torch.rand(4, 3, 2), STEP, time=(0, 1))
    flat = x.reshape(12, 2)
    assert rt._shape_time("reshape", (x, 12, 2), {}, x, flat, (0, 1)) == (0, 3)
    moved = x.permute(1, 0, 2)
    assert rt._shape_time("permute", (x, 1, 0, 2), {}, x, moved, (0, 1)) == (1, 1)
    assert rt._shape_time("clone", (x,), {}, x, x.clone(), (0, 1)) == (0, 1)


def test_the_layout_of_a_per_step_result():
    rt = runtime("m")
    rt.steps = 4
    x = rt.tag(torch.rand(4, 3, 2), STEP, time=(0, 1))
    reps = [rt.reps[x]]
    assert rt._step_time("relu", (x,), {}, [x], reps, F.relu(x)) == (0, 1)
    assert rt._step_time("sum", (x, 0), {}, [x], reps, x.sum(0)) is None  # time reduced
    assert rt._step_time("sum", (x, 2), {}, [x], reps, x.sum(2)) == (0, 1)
    assert rt._step_time("softmax", (x, 0), {}, [x], reps, x.softmax(0)) is None  # mixes steps
    assert rt._kept_time("linear", x, (0, 1)) == (0, 1)
    assert rt._kept_time("linear", x.transpose(0, 2), (2, 1)) is None  # along time
