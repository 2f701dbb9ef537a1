"""saf_plugin.runtime.neuron_io on its own: a neuron's input current as an accumulation with its
decay (a per-step current accumulated here), its per-step current (an accumulation
de-accumulated), its slot for the sequence (a second call in one step refused), its spikes
tagged with their accumulation, and the model's output in SAF-E and SAF-F."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from saf_plugin import core
from saf_plugin.dataflow import ACC, SPIKE, STEP, Refusal, Rep, Site
from saf_plugin.neuron_step import NeuronState
from saf_plugin.runtime import Runtime

neuron = pytest.importorskip("spikingjelly.activation_based.neuron")

LAM = 0.5


def runtime(mode: str = "E") -> Runtime:
    from saf_plugin import registry

    registry.load_adapters()
    lif = neuron.LIFNode(tau=2.0, v_reset=None)
    rt = Runtime(nn.Sequential(nn.Linear(3, 4), lif), mode, [lif], [registry.lookup(lif).neuron])
    rt.step_mode, rt.call, rt.t, rt.steps, rt.active = "s", 1, 0, 1, True
    return rt


def test_a_per_step_current_is_accumulated_with_the_neurons_decay():
    rt = runtime()
    st = NeuronState()
    i = torch.rand(4, 2, 3, dtype=torch.float64)
    ref = core.accumulate(i, LAM)
    for t in range(4):
        rt.call, rt.t = t + 1, t
        y, lam = rt.neuron_input(rt.tag(i[t].clone(), STEP), LAM, st)
        assert lam == LAM
        torch.testing.assert_close(y, ref[t], rtol=0, atol=1e-12)


def test_an_accumulation_of_this_step_is_taken_as_it_is_and_teaches_its_sites():
    rt = runtime()
    site = Site(("linear", None), "here")
    acc = torch.rand(2, 3)
    rt.reps[acc] = Rep(ACC, rt.call, 0, decay=0.8, site=site, sites=(site,))
    y, lam = rt.neuron_input(acc, LAM, NeuronState(), module="the neuron")
    assert y is acc and lam == 0.8
    assert site.recv == LAM and site.recv_from == "the neuron"
    assert site.needs_prev, "another decay: the sites feed per-step values from the next step"


def test_a_per_step_neuron_gets_the_de_accumulated_current():
    rt = runtime()
    site = Site(("linear", None), "here")
    rt.call, rt.t = 2, 1
    acc = torch.tensor([3.0, 1.0])
    rt.reps[acc] = Rep(ACC, rt.call, 1, decay=LAM, prev=torch.tensor([2.0, 2.0]), site=site,
                       sites=(site,))
    assert rt.neuron_current(acc, LAM).tolist() == [2.0, 0.0]


def test_a_neuron_runs_once_per_step():
    rt = runtime()
    lif = rt.neurons[0]
    st = rt.slot(lif, NeuronState)
    assert rt.states[id(lif)] is st and id(lif) in rt.ran
    with pytest.raises(Refusal, match="ran twice in one time step"):
        rt.slot(lif, NeuronState)
    rt.slots.clear()  # the next step
    assert rt.slot(lif, NeuronState) is st


@pytest.mark.parametrize("mode", ["E", "F"])
def test_the_output_is_the_spikes_or_their_representation(mode):
    rt = runtime(mode)
    rt.call, rt.t = 3, 2
    spikes = torch.tensor([1.0, 0.0])
    acc = torch.tensor([1.75, 0.5])  # â[2] = λ² s[0] + λ s[1] + s[2]
    out = rt.output((rt.emit(spikes, acc, LAM), "a string"))
    assert out[1] == "a string"
    if mode == "E":
        assert out[0] is spikes and rt.reps[spikes].kind == SPIKE
    else:  # A[t]/c[t], c[2] = 1 + λ + λ²
        torch.testing.assert_close(out[0], acc / (1 + LAM + LAM ** 2))
