"""saf_plugin.registry (and the entries saf_plugin.extend writes into it): lookup by MRO, the
fall-through of a subclass that overrides a spec's dynamics, register / register_linear /
register_per_step / register_neuron entries, and load_adapters importing only the adapters of
libraries the user imported.

Throwaway classes are defined in the tests; their entries are removed again (``registered``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from spikingjelly.activation_based import base, layer, neuron, surrogate
from torch import nn

import saf_plugin
from saf_plugin import registry
from saf_plugin.registry import Spec, lookup, lookup_class, register

registry.load_adapters()  # (set_saf, check and lookup call it too)

@pytest.fixture
def registered(restore_registry):
    """Classes registered by the test are unregistered afterwards (conftest.py)."""
    yield


# ----------------------------------------------------------------------------- lookup


class _Base(nn.Module):
    def forward(self, x):
        return x


class _Mid(_Base):
    pass


class _Leaf(_Mid):
    pass


class _Override(_Mid):
    def forward(self, x):
        return 2 * x


def test_lookup_walks_the_mro_to_the_nearest_registered_class(registered):
    base_spec, mid_spec = Spec("stateful", dynamics=()), Spec("linear")
    assert lookup(_Leaf()) is None
    register(_Base, base_spec)
    assert lookup(_Leaf()) is base_spec and lookup(_Base()) is base_spec
    register(_Mid, mid_spec)
    assert lookup(_Leaf()) is mid_spec and lookup(_Mid()) is mid_spec
    assert lookup(_Base()) is base_spec
    replaced = Spec("nonlinear")
    register(_Mid, replaced)  # register replaces
    assert lookup(_Leaf()) is replaced


def test_a_subclass_overriding_a_dynamics_method_falls_through_to_the_base_catch_all(registered):
    catch_all, mid_spec = Spec("stateful", dynamics=()), Spec("linear")  # dynamics: forward
    register(_Mid, mid_spec)
    assert lookup(_Override()) is None, "overrides forward: not covered by _Mid's spec"
    register(_Base, catch_all)
    assert lookup(_Override()) is catch_all
    assert lookup(_Leaf()) is mid_spec, "a subclass that overrides nothing keeps the spec"


def test_lookup_class_sees_through_a_saf_class():
    from saf_plugin import _classes

    saf_cls = _classes.make("method", nn.MaxPool2d, {})
    assert saf_cls is not nn.MaxPool2d and saf_cls._saf_base is nn.MaxPool2d
    assert lookup_class(saf_cls) is lookup_class(nn.MaxPool2d) is not None
    assert lookup_class(nn.Linear) is None, "ordinary layers are judged by their operations"


def test_spikingjelly_lookup_closed_form_neurons_and_the_base_node_catch_all():
    from saf_plugin.adapters import spikingjelly as sj

    class Plain(neuron.LIFNode):  # overrides nothing: the closed form
        pass

    class Charge(neuron.LIFNode):  # overrides a dynamics method: BaseNode's per-step entry
        def neuronal_charge(self, x):
            return super().neuronal_charge(x)

    assert lookup(neuron.LIFNode()).neuron is sj.ADAPTER
    assert lookup(Plain()).neuron is sj.ADAPTER
    spec = lookup(Charge())
    assert spec is lookup_class(neuron.BaseNode) and spec.neuron is sj.PER_STEP
    assert lookup(layer.Linear(2, 2)) is None
    assert lookup(layer.MaxPool2d(2)).role == "nonlinear"
    assert lookup(layer.SeqToANNContainer(nn.Linear(2, 2))).role == "container"

    class Mem(base.MemoryModule):
        def forward(self, x):
            return x

    spec = lookup(Mem())  # any other memory module runs its own step, per step
    assert spec.role == "neuron" and spec.neuron is sj.PER_STEP
    assert spec.judge(Mem())[0] == "exact" and "per step" in spec.judge(Mem())[1]

    class Holder(base.MemoryModule):  # one that holds neurons is walked into instead
        def __init__(self):
            super().__init__()
            self.sn = neuron.LIFNode()

    assert lookup(Holder()) is None and lookup(Holder().sn) is lookup(neuron.LIFNode())


def test_subclass_overriding_dynamics_runs_per_step_not_the_closed_form(float64):
    # (moved from test_spikingjelly_api.py)
    class MyLIF(neuron.LIFNode):
        def single_step_functional_forward(self, inputs, states, **kw):
            return super().single_step_functional_forward(inputs, states, **kw)

    net = nn.Sequential(layer.Linear(4, 4), MyLIF(v_reset=None))
    finding = saf_plugin.check(net)[0]
    assert finding.status == "exact" and finding.reason.startswith("per step"), finding.line()
    assert saf_plugin.check(net, mode="F")[0].status == "unsupported"


# ----------------------------------------------------------------------------- entries


def test_register_linear_entry(registered):
    class MyMap(nn.Module):
        def forward(self, x):
            return x

    class Shifted(MyMap):
        pass

    def shift(m, out, nd):
        return torch.ones(())

    saf_plugin.register_linear(MyMap)
    spec = lookup(MyMap())
    assert (spec.role, spec.whole, spec.shift, spec.neuron) == ("linear", True, None, None)
    saf_plugin.register_linear(Shifted, shift=shift)
    assert lookup(Shifted()).shift is shift and lookup(MyMap()).shift is None
    # under SAF the module's class is swapped to the class that runs it on accumulations
    net = nn.Sequential(layer.Linear(2, 2), neuron.LIFNode(v_reset=None), MyMap())
    saf_plugin.set_saf(net, "E")
    assert type(net[2]).__name__ == "SAFMyMap" and net[2]._saf_spec is spec
    saf_plugin.set_saf(net, None)
    assert type(net[2]) is MyMap


def test_register_per_step_entry(registered):
    class MyOp(nn.Module):
        def forward(self, x):
            return x.clamp(0, 1)

    saf_plugin.register_per_step(MyOp)
    spec = lookup(MyOp())
    assert (spec.role, spec.whole, spec.neuron, spec.judge) == ("nonlinear", True, None, None)
    net = nn.Sequential(layer.Linear(2, 2), neuron.LIFNode(v_reset=None), MyOp())
    saf_plugin.set_saf(net, "E")
    assert type(net[2]).__name__ == "SAFMyOp"
    saf_plugin.set_saf(net, None)
    assert type(net[2]) is MyOp


def test_register_neuron_entry_for_a_plain_module(registered):
    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.tau, self.v, self.w = 4.0, None, None

        def forward(self, x):
            self.v = x if self.v is None else self.v + x
            return (self.v > 1).to(x.dtype)

    saf_plugin.register_neuron(Cell, decay=lambda m: 1 - 1 / m.tau, state=("v", "w"))
    cell = Cell()
    spec = lookup(cell)
    assert spec.role == "neuron" and spec.dynamics == ()
    adapter = spec.neuron
    assert adapter.decay(cell) == 0.75 and adapter.state == ("v", "w")
    assert adapter.route(cell) == "per step"
    assert adapter.is_fresh(cell)
    cell(torch.ones(2))
    assert not adapter.is_fresh(cell), "a tensor in a state attribute: inside a sequence"
    cell.v = None
    cell.w = 0.0
    assert adapter.is_fresh(cell), "None or a number: reset"
    status, reason, _ = spec.judge(cell)
    assert status == "exact" and reason.startswith("per step")

    class Sub(Cell):  # dynamics=(): a subclass overriding forward is still this neuron
        def forward(self, x):
            return super().forward(x)

    assert lookup(Sub()) is spec

    saf_plugin.register_neuron(Cell, decay=0.5)  # a float decay; re-registering replaces
    assert lookup(Cell()).neuron.decay(Cell()) == 0.5 and lookup(Cell()).neuron.state == ("v",)


def test_register_neuron_entry_for_a_spikingjelly_memory_module(registered):
    class Soft(base.MemoryModule):
        def __init__(self):
            super().__init__()
            self.tau, self.v_threshold = 2.0, 0.5
            self.surrogate_function = surrogate.Sigmoid()
            self.register_memory("v", 0.0)

        def forward(self, x):
            return x

    class PerStep(Soft):
        pass

    saf_plugin.register_neuron(Soft, decay=lambda m: 1 - 1 / m.tau, lif=lambda m: dict(
        decay=1 - 1 / m.tau, threshold=m.v_threshold, surrogate=m.surrogate_function))
    soft = Soft()
    adapter = lookup(soft).neuron
    assert adapter.route(soft) == "closed form"
    p = adapter.params(soft)
    assert (p.decay, p.theta, p.input_scale, p.surrogate) == (0.5, 0.5, None,
                                                             soft.surrogate_function)
    assert lookup(soft).judge(soft)[1].startswith("closed form")
    saf_plugin.register_neuron(PerStep, decay=0.5)  # without lif: its own step, per step
    assert lookup(PerStep()).neuron.route(PerStep()) == "per step"
    assert lookup(soft).neuron is adapter


def test_register_neuron_with_lif_needs_a_memory_module(registered):
    class NotMemory(nn.Module):
        pass

    with pytest.raises(TypeError, match="MemoryModule"):
        saf_plugin.register_neuron(NotMemory, lif=lambda m: {})
    assert lookup(NotMemory()) is None


# ----------------------------------------------------------------------------- adapters


def test_load_adapters_imports_the_adapters_of_imported_libraries_only(monkeypatch):
    imported = []
    monkeypatch.setattr(registry, "_ADAPTERS", {"spikingjelly": "adapter.sj",
                                                "no_such_library_xyz": "adapter.none"})
    monkeypatch.setattr(registry.importlib, "import_module", lambda name: imported.append(name))
    registry.load_adapters()
    assert imported == ["adapter.sj"]


@pytest.mark.slow  # a fresh interpreter: importing torch alone takes seconds
def test_import_saf_plugin_imports_neither_library():
    code = textwrap.dedent("""
        import sys
        import saf_plugin
        from torch import nn
        libs = ("spikingjelly", "snntorch", "saf_plugin.adapters.spikingjelly",
                "saf_plugin.adapters.snntorch")
        assert not any(m in sys.modules for m in libs), [m for m in libs if m in sys.modules]
        findings = saf_plugin.check(nn.Sequential(nn.Linear(2, 2)))  # runs load_adapters
        assert findings and "no spiking neuron" in findings[0].reason
        assert not any(m in sys.modules for m in libs), [m for m in libs if m in sys.modules]
        assert "saf_plugin.adapters.torch_nn" in sys.modules
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
