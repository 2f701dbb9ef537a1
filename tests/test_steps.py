"""saf_plugin.runtime.steps on its own: what a call of a converted model starts (a new sequence
or the next step of one), what it refuses before any output (a state SAF does not have, an
input it cannot accumulate), and the time layout of its input in step mode 'm'."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import saf_plugin
from saf_plugin.dataflow import STEP

sj = pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import functional, layer, neuron  # noqa: E402


def converted(step_mode: str = "s"):
    net = nn.Sequential(layer.Linear(3, 4), neuron.LIFNode(tau=2.0, v_reset=None))
    functional.set_step_mode(net, step_mode)
    saf_plugin.set_saf(net, "E")
    return net, net.__dict__["_saf_rt"]


def test_a_call_after_a_reset_starts_a_sequence_and_the_next_continues_it():
    net, rt = converted()
    x = torch.rand(2, 3)
    rt.begin((x,))
    assert (rt.t, rt.steps, rt.step_mode) == (0, 1, "s") and rt.reps[x].kind == STEP
    assert rt.reps[x].raw and rt.reps[x].early
    rt.ran.add(id(net[1]))
    net[1]._memories["saf_acc"] = torch.zeros(())  # the neuron ran: not fresh any more
    rt.begin((x,))
    assert rt.t == 1 and rt.call == 2
    functional.reset_net(net)
    rt.begin((x,))
    assert rt.t == 0


def test_a_copy_made_in_the_middle_of_a_sequence_must_be_reset_first():
    net, rt = converted()
    net(torch.rand(2, 3))
    copied = copy.deepcopy(net)
    with pytest.raises(saf_plugin.SAFStateError,
                       match=r"reset it before running it \(spikingjelly: functional.reset_net"):
        copied(torch.rand(2, 3))
    functional.reset_net(copied)
    copied(torch.rand(2, 3))


@pytest.mark.parametrize("bad, match", [(float("nan"), "nan or ±inf"), (None, "empty")])
def test_an_input_saf_cannot_accumulate_is_refused(bad, match):
    _, rt = converted()
    x = torch.rand(0, 3) if bad is None else torch.full((2, 3), bad)
    with pytest.raises(ValueError, match=match):
        rt.begin((x,))


def test_step_mode_m_takes_time_from_dim_0_unless_the_probe_learnt_otherwise():
    _, rt = converted("m")
    x = torch.rand(5, 2, 3)
    rt.begin((x,))
    assert rt.steps == 5 and rt.reps[x].time == (0, 1)
    assert rt._input_layout([x], None) == ((0, 1), 5)
    rt.probing = (None, 4)  # a probe testing "no input dim is time, T = 4"
    assert rt._input_layout([x], None) == (None, 4)
    with pytest.raises(ValueError, match=r"\[T, B, \.\.\.\]"):
        rt._input_layout([torch.tensor(1.0)], None)


def test_each_linear_map_of_a_step_is_one_site():
    net, rt = converted()
    net(torch.rand(2, 3))
    assert len(rt.sites) == 1 and rt.sites[0].key[0] == "linear"
    assert "(in module 0)" in rt.sites[0].where
