"""Property: over random small architectures built from the
operations SAF meets between neurons -- Linear/Conv, AvgPool, MaxPool (module and F.max_pool2d),
BatchNorm in training mode, products of two spike tensors, branches summed, mixed τ (2 and 8),
soft-reset LIF and IF, per-step random tensors (a rand_like dropout mask, randn_like
noise), in step mode 'm' operations across time (a convolution across time after a permute, a
module that loops over the steps itself and stacks them, a head on the mean or max over time),
and batch == T -- set_saf(net, "E") either refuses with a saf-plugin error before any output, or
the outputs equal the plain model's within 1e-9 (float64) and set_saf(net, None) restores it bit
for bit. Every neuron layer fires (thresholds calibrated; examples where that is impossible are
discarded). Bounded and deterministic (derandomised, explicit examples for each of the
latter operations), so it runs the same in CI every time.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

from corpus_harness import Case, assert_fires, calibrate, judge, prepared, run

pytest.importorskip("hypothesis", reason="the property tests need hypothesis (pip install "
                    "hypothesis)")
from hypothesis import HealthCheck, Phase, assume, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

T, B, C, HW = 3, 2, 3, 8
_ids = itertools.count()


def _neuron(kind: str, tau: float):
    if kind == "if":
        return neuron.IFNode(v_reset=None)
    return neuron.LIFNode(tau=tau, decay_input=False, v_reset=None)


class TimeLoop(nn.Module):
    """A module that loops over the steps of its [T, B, ...] input itself: a 1x1 conv per step
    and a leaky running sum h[t] = 0.5 h[t−1] + conv(x[t]), the steps stacked."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 1)

    def forward(self, x):
        h, out = None, []
        for t in range(x.shape[0]):
            y = self.conv(x[t])
            h = y if h is None else 0.5 * h + y
            out.append(h)
        return torch.stack(out)


class RandomNet(nn.Module):
    """Blocks in order on a [.., C, H, W] tensor; each block ends in neurons. Blocks:

    ("conv", bn, kind, tau)          conv 3x3 (+ BatchNorm, training mode) -> neuron
    ("avgpool"|"maxpool"|"fmaxpool") 2x2 pooling of spikes (module, module, F.max_pool2d)
    ("prod", kind_a, tau_a, kind_b, tau_b)   a·b of two neuron branches fed by the same input
    ("sum", kind_a, tau_a, kind_b, tau_b)    a + b of two such branches
    ("mask", p)                      x · (rand_like(x) > p) / (1 − p), a new mask at every call
    ("noise", sigma)                 x + sigma · randn_like(x), new at every call
    step mode 'm' only ([T, B, C, H, W]):
    ("tconv", kind, tau)             Conv3d with kernel (2, 1, 1) across time after a permute to
                                     [B, C, T, H, W] (causal: the first T outputs), back -> neuron
    ("tloop", kind, tau)             TimeLoop (a loop over the steps, stacked) -> neuron

    readout: "step" (a head per step on the spatial mean), or in 'm' "tmean" / "tmax" (a head on
    the mean / max over time of the spatial mean: one output per sequence).
    """

    def __init__(self, blocks, readout="step"):
        super().__init__()
        self.blocks, self.readout = blocks, readout
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
            elif b[0] in ("fmaxpool", "mask", "noise"):
                self.layers.append(nn.Identity())
            elif b[0] == "tconv":
                self.layers.append(nn.ModuleList([
                    nn.Conv3d(C, C, (2, 1, 1), padding=(1, 0, 0)), _neuron(b[1], b[2])]))
            elif b[0] == "tloop":
                self.layers.append(nn.Sequential(TimeLoop(), _neuron(b[1], b[2])))
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
            elif b[0] == "mask":
                x = x * (torch.rand_like(x) > b[1]) / (1 - b[1])
            elif b[0] == "noise":
                x = x + b[1] * torch.randn_like(x)
            elif b[0] == "tconv":
                steps = x.shape[0]
                y = m[0](x.permute(1, 2, 0, 3, 4))[:, :, :steps]
                x = m[1](y.permute(2, 0, 1, 3, 4))
            else:
                x = m(x)
        x = x.mean((-2, -1))
        if self.readout == "tmean":
            x = x.mean(0)
        elif self.readout == "tmax":
            x = x.max(0).values
        return self.head(x)


neurons_ = st.tuples(st.sampled_from(["lif", "if"]), st.sampled_from([2.0, 8.0]))
conv_block = st.builds(lambda bn, n: ("conv", bn, *n), st.booleans(), neurons_)
pair_block = st.builds(lambda op, a, b: (op, *a, *b), st.sampled_from(["prod", "sum"]),
                       neurons_, neurons_)
pool_block = st.sampled_from([("avgpool",), ("maxpool",), ("fmaxpool",)])
made_block = st.one_of(st.builds(lambda p: ("mask", p), st.sampled_from([0.2, 0.5])),
                       st.builds(lambda s: ("noise", s), st.sampled_from([0.3, 1.0])))
time_block = st.builds(lambda op, n: (op, *n), st.sampled_from(["tconv", "tloop"]), neurons_)


@st.composite
def architectures(draw):
    """Step mode, then a first conv block and 1-4 blocks with at most two poolings (8x8 ->
    2x2); per-step made tensors in both step modes, operations across time and the readouts
    over time in step mode 'm'; batch 2 or T."""
    step_mode = draw(st.sampled_from(["s", "m"]))
    kinds = ["conv", "pair", "pool", "made"] + (["time"] if step_mode == "m" else [])
    blocks = [draw(conv_block)]
    pools = 0
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(kinds))
        if kind == "pool" and pools < 2:
            blocks.append(draw(pool_block))
            pools += 1
        elif kind == "pair":
            blocks.append(draw(pair_block))
        elif kind == "made":
            blocks.append(draw(made_block))
        elif kind == "time":
            blocks.append(draw(time_block))
        else:
            blocks.append(draw(conv_block))
    readout = draw(st.sampled_from(["step", "tmean", "tmax"] if step_mode == "m" else ["step"]))
    return dict(step_mode=step_mode, blocks=blocks, readout=readout,
                batch=draw(st.sampled_from([B, T])))


def _case(arch, seed):
    blocks, readout, batch = arch["blocks"], arch["readout"], arch["batch"]

    def build(step_mode):
        torch.manual_seed(seed)
        net = RandomNet(blocks, readout).double().train()
        functional.set_step_mode(net, step_mode)
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(T, batch, C, HW, HW, generator=g, dtype=torch.float64) * 2
        # step mode 'm' calibrates on the whole sequence (operations across time need it)
        first = x if step_mode == "m" else x[:1]
        calibrate(net, lambda: run(net, first, step_mode), quantile=0.6)
        return net, x
    return Case(f"random{next(_ids)}", build)


LIF2, IF8 = ("lif", 2.0), ("if", 8.0)
EXPLICIT = [  # one of each of those operations, always run (before the generated examples)
    dict(step_mode="m", blocks=[("conv", False, *LIF2), ("tconv", *LIF2)], readout="tmean",
         batch=T),
    dict(step_mode="m", blocks=[("conv", True, *LIF2), ("tloop", *IF8), ("maxpool",)],
         readout="tmax", batch=B),
    dict(step_mode="s", blocks=[("conv", False, *LIF2), ("mask", 0.2), ("conv", False, *LIF2)],
         readout="step", batch=T),
    dict(step_mode="m", blocks=[("conv", False, *LIF2), ("noise", 0.3), ("conv", False, *IF8)],
         readout="tmean", batch=T),
    dict(step_mode="m", blocks=[("conv", False, *LIF2), ("mask", 0.5), ("tconv", *LIF2),
                                ("avgpool",)], readout="step", batch=B),
]


def _explicit(test):
    for arch in reversed(EXPLICIT):
        test = example(arch=arch, seed=7)(test)
    return test


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          phases=(Phase.explicit, Phase.generate),  # no shrinking: a failure reports as found
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(arch=architectures(), seed=st.integers(0, 2**16))
@_explicit
def test_random_architectures_are_exact_or_refused(arch, seed):
    step_mode = arch["step_mode"]
    case = _case(arch, seed)
    try:
        _, _, _, rates = prepared(case, step_mode)
    except AssertionError:  # calibration found a neuron with no positive input
        assume(False)
    assume(all(0.0 < r < 1.0 for r in rates.values()))
    assert_fires(rates, str(arch))
    for b in arch["blocks"]:
        if b[0] in ("mask", "noise", "tconv", "tloop"):
            event(f"block {b[0]}")
    event(f"readout {arch['readout']}, batch {'== T' if arch['batch'] == T else '!= T'}")
    outcome = judge(case, "E", step_mode)
    event(outcome.kind)  # pytest --hypothesis-show-statistics: how many were exact / refused
    assert outcome.kind in ("exact", "refused"), f"{arch}: {outcome}"


def test_mixed_decays_after_an_elementwise_operation_in_single_step_mode():
    arch = dict(step_mode="s", blocks=[("conv", False, *LIF2), ("noise", 1.0),
                                       ("sum", *LIF2, *IF8)], readout="step", batch=B)
    case = _case(arch, 7)
    _, _, _, rates = prepared(case, "s")
    assert_fires(rates, str(arch))
    outcome = judge(case, "E", "s")
    assert outcome.kind in ("exact", "refused"), f"{arch}: {outcome}"
