"""Property (issue 9, "Done when"): over random small architectures built from the operations
SAF meets between neurons -- Linear/Conv, AvgPool, MaxPool (module and F.max_pool2d), BatchNorm in
training mode, products of two spike tensors, branches summed, mixed τ (2 and 8), soft-reset LIF
and IF -- set_saf(net, "E") either refuses with a saf-plugin error before any output, or the
outputs equal the plain model's within 1e-9 (float64) and set_saf(net, None) restores it bit for
bit. Every neuron layer fires (thresholds calibrated; examples where that is impossible are
discarded). Bounded and deterministic (derandomised), so it runs the same in CI every time.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

from corpus_harness import Case, assert_fires, calibrate, judge, prepared, run

T, B, C, HW = 3, 2, 3, 8
_ids = itertools.count()


def _neuron(kind: str, tau: float):
    if kind == "if":
        return neuron.IFNode(v_reset=None)
    return neuron.LIFNode(tau=tau, decay_input=False, v_reset=None)


class RandomNet(nn.Module):
    """Blocks in order on a [.., C, H, W] tensor; each block ends in neurons. Blocks:

    ("conv", bn, kind, tau)          conv 3x3 (+ BatchNorm, training mode) -> neuron
    ("avgpool"|"maxpool"|"fmaxpool") 2x2 pooling of spikes (module, module, F.max_pool2d)
    ("prod", kind_a, tau_a, kind_b, tau_b)   a·b of two neuron branches fed by the same input
    ("sum", kind_a, tau_a, kind_b, tau_b)    a + b of two such branches
    """

    def __init__(self, blocks):
        super().__init__()
        self.blocks = blocks
        self.layers = nn.ModuleList()
        for b in blocks:
            if b[0] == "conv":
                mods = [layer.Conv2d(C, C, 3, padding=1)]
                if b[1]:
                    mods.append(layer.BatchNorm2d(C))
                mods.append(_neuron(b[2], b[3]))
                self.layers.append(nn.Sequential(*mods))
            elif b[0] == "avgpool":
                self.layers.append(layer.AvgPool2d(2))
            elif b[0] == "maxpool":
                self.layers.append(layer.MaxPool2d(2))
            elif b[0] == "fmaxpool":
                self.layers.append(nn.Identity())
            else:
                self.layers.append(nn.ModuleList([
                    nn.Sequential(layer.Conv2d(C, C, 1), _neuron(b[1], b[2])),
                    nn.Sequential(layer.Conv2d(C, C, 1), _neuron(b[3], b[4]))]))
        self.head = layer.Linear(C, 5)

    def forward(self, x):
        for b, m in zip(self.blocks, self.layers):
            if b[0] == "fmaxpool":
                x = F.max_pool2d(x.flatten(0, -4), 2).view(*x.shape[:-2], x.shape[-2] // 2,
                                                           x.shape[-1] // 2)
            elif b[0] == "prod":
                x = m[0](x) * m[1](x)
            elif b[0] == "sum":
                x = m[0](x) + m[1](x)
            else:
                x = m(x)
        return self.head(x.mean((-2, -1)))


neurons_ = st.tuples(st.sampled_from(["lif", "if"]), st.sampled_from([2.0, 8.0]))
conv_block = st.builds(lambda bn, n: ("conv", bn, *n), st.booleans(), neurons_)
pair_block = st.builds(lambda op, a, b: (op, *a, *b), st.sampled_from(["prod", "sum"]),
                       neurons_, neurons_)
pool_block = st.sampled_from([("avgpool",), ("maxpool",), ("fmaxpool",)])


@st.composite
def architectures(draw):
    """A first conv block, then 1-4 blocks with at most two poolings (8x8 -> 2x2)."""
    blocks = [draw(conv_block)]
    pools = 0
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "pair", "pool"]))
        if kind == "pool" and pools < 2:
            blocks.append(draw(pool_block))
            pools += 1
        elif kind == "pair":
            blocks.append(draw(pair_block))
        else:
            blocks.append(draw(conv_block))
    return blocks


def _case(blocks, seed):
    def build(step_mode):
        torch.manual_seed(seed)
        net = RandomNet(blocks).double().train()
        functional.set_step_mode(net, step_mode)
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(T, B, C, HW, HW, generator=g, dtype=torch.float64) * 2
        calibrate(net, lambda: run(net, x[:1], step_mode), quantile=0.6)
        return net, x
    return Case(f"random{next(_ids)}", build)


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          phases=(Phase.explicit, Phase.generate),  # no shrinking: a failure reports as found
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(blocks=architectures(), step_mode=st.sampled_from(["s", "m"]),
       seed=st.integers(0, 2**16))
def test_random_architectures_are_exact_or_refused(blocks, step_mode, seed):
    case = _case(blocks, seed)
    try:
        _, _, _, rates = prepared(case, step_mode)
    except AssertionError:  # calibration found a neuron with no positive input
        assume(False)
    assume(all(0.0 < r < 1.0 for r in rates.values()))
    assert_fires(rates, str(blocks))
    outcome = judge(case, "E", step_mode)
    event(outcome.kind)  # pytest --hypothesis-show-statistics: how many were exact / refused
    assert outcome.kind in ("exact", "refused"), f"{blocks} ({step_mode}): {outcome}"
