"""The written interfaces of saf_plugin.contracts and what the registry asks through them: every
registered neuron adapter and library adapter implements its contract; the library adapters
recognise their modules, give a model's step mode, reset a model and say how to; the registry's
functions ask every library (a library registered by a test is consulted too); the three public
``register_*`` functions live in one module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import saf_plugin
from saf_plugin import contracts, extend, registry

sj = pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import functional, layer, neuron  # noqa: E402

registry.load_adapters()


def test_every_neuron_adapter_implements_the_contract():
    adapters = {id(s.neuron): s.neuron for s in registry._REGISTRY.values()
                if s.neuron is not None}
    assert adapters
    for a in adapters.values():
        assert isinstance(a, contracts.NeuronAdapter)
        for name in ("saf_class", "attach", "detach", "decay", "is_fresh"):  # required
            assert callable(getattr(a, name)), name


def test_every_library_adapter_implements_the_contract():
    libs = registry.libraries()
    assert "spikingjelly" in {lib.name for lib in libs}
    for lib in libs:
        assert isinstance(lib, contracts.LibraryAdapter), lib
        assert lib.reset_advice and lib.name


def test_spikingjelly_knows_its_modules_step_mode_and_state():
    lib = registry._LIBRARIES["spikingjelly"]
    lif, fc = neuron.LIFNode(step_mode="m"), layer.Linear(2, 2, step_mode="m")
    assert lib.owns(lif) and not lib.owns(fc) and not lib.owns(nn.Linear(2, 2))
    assert lib.step_mode(lif) == "m" and lib.step_mode(fc) == "m"
    assert lib.step_mode(nn.Linear(2, 2)) is None
    assert registry.model_step_mode([fc]) == "s", "a model's step mode is its neurons'"
    assert lib.step_mode_advice("'s'") == "functional.set_step_mode(net, 's')"
    assert not lib.keeps_state_in_buffers(lif)
    lif(torch.ones(2, 3, requires_grad=True) * 2)
    assert lib.state_stores(lif) == (lif._memories,) and lif.v.requires_grad
    lib.detach_state(lif)
    assert not lif.v.requires_grad
    lib.reset(nn.Sequential(fc, lif))
    assert lif.v == 0.0


def test_the_registry_asks_every_library():
    net = nn.Sequential(layer.Linear(2, 2), neuron.LIFNode(tau=2.0))
    assert registry.model_step_mode(net.modules()) == "s"
    functional.set_step_mode(net, "m")
    assert registry.model_step_mode(net.modules()) == "m"
    assert registry.step_modes([net[1], neuron.IFNode()]) == {"s", "m"}
    assert registry.reset_advice(net.modules()) == "(spikingjelly: functional.reset_net(net))"
    assert registry.model_library(net).name == "spikingjelly"
    assert registry.model_library(nn.Linear(2, 2)) is None
    assert registry.model_step_mode([nn.Linear(2, 2)]) == "s"


def test_snntorch_knows_its_neurons_and_their_buffers():
    snn = pytest.importorskip("snntorch")
    registry.load_adapters()
    lib = registry._LIBRARIES["snntorch"]
    leaky = snn.Leaky(beta=0.5, init_hidden=True)
    net = nn.Sequential(nn.Linear(2, 2), leaky)
    assert lib.owns(leaky) and lib.keeps_state_in_buffers(leaky) and lib.step_mode(leaky) is None
    assert lib.step_mode_advice("'s'") is None
    net(torch.ones(1, 2) * 5)
    lib.reset(net)
    assert float(leaky.mem.abs().sum()) == 0
    assert "snntorch: utils.reset(net)" in registry.reset_advice([leaky])
    assert registry.model_library(net).name == "snntorch"


class _Toy:
    """A library adapter of a library that does not exist: what the registry does with it."""

    name = "toy"
    reset_advice = "toy.reset(net)"

    def __init__(self):
        self.reset_calls = []

    def owns(self, module):
        return isinstance(module, nn.Identity)

    def step_mode(self, module):
        return "m" if isinstance(module, nn.Identity) else None

    def step_mode_advice(self, mode):
        return f"toy.mode(net, {mode})"

    def reset(self, net):
        self.reset_calls.append(net)

    def detach_state(self, module):
        pass

    def state_stores(self, module):
        return ()

    def keeps_state_in_buffers(self, module):
        return isinstance(module, nn.Identity)

    def classes_changed(self, net):
        pass

    def neuron_adapter(self, cls, decay, lif):
        return None


def test_a_registered_library_is_asked_and_unregistered_after_the_test(restore_registry):
    toy = _Toy()
    assert isinstance(toy, contracts.LibraryAdapter)
    registry.register_library(toy)
    net = nn.Sequential(nn.Identity())
    registry.reset_model(net)
    assert toy.reset_calls == [net]
    assert registry.model_step_mode(net.modules()) == "m"
    assert registry.reset_advice(net.modules()) == "(toy: toy.reset(net))"
    assert "toy.mode(net, 's')" in registry.step_mode_advice("'s'")
    assert registry.keeps_state_in_buffers(net[0])


def test_the_library_is_gone_after_the_test_that_registered_it():
    assert "toy" not in registry._LIBRARIES


def test_register_neuron_asks_the_libraries_for_their_neuron_base(restore_registry):
    class MyMemory(sj.base.MemoryModule):
        def __init__(self):
            super().__init__()
            self.register_memory("v", 0.0)

        def forward(self, x):
            self.v = self.v + x
            return (self.v > 1).to(x)

    saf_plugin.register_neuron(MyMemory, decay=0.5)
    adapter = registry.lookup(MyMemory()).neuron
    from saf_plugin.adapters import spikingjelly as sj_adapter

    assert adapter.saf_class is sj_adapter.saf_class and adapter.lam(MyMemory()) == 0.5
    with pytest.raises(TypeError, match="lif=...") as e:
        saf_plugin.register_neuron(nn.ReLU, lif=lambda m: {})
    assert "MemoryModule" in str(e.value)


def test_the_public_register_functions_live_in_extend():
    for name in ("register_linear", "register_neuron", "register_per_step"):
        assert getattr(saf_plugin, name) is getattr(extend, name)
        assert getattr(saf_plugin, name).__module__ == "saf_plugin.extend"
    assert not hasattr(registry, "register_linear")


def test_models_pickled_by_the_first_release_find_their_neuron_adapter_class():
    assert registry.NeuronAdapter is registry.NeuronFunctions  # (pickled by name)
