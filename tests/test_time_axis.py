"""Time is tracked, not guessed, and operations across time run exactly in step mode 'm':
which dimension of a tensor is time must be known from where the sequence entered and
what each operation did to it, never inferred from sizes (a batch of T samples is not T steps).

- models whose forward writes into its sequence, mixes steps (mean or max over time, a
  convolution across time after ``permute``, a head on time-averaged features, a loop over steps
  that stacks them), each at batch == T and batch != T: SAF-E equals the plain model within
  1e-9 (float64, every neuron layer firing) and reverts bit for bit;
- ``check(net, x)`` never calls a wrong route exact;
- SAF-E's gradient through an operation across time equals a hand-written reference (OTTT's
  rule with the operation differentiated as the plain op on the per-step values).

The pure rules of ``saf_plugin/timeaxis.py``: tests/test_timeaxis.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import corpus_models as CM
import saf_plugin
from exactness import assert_exact, ready, root_routes, run_seq

T = 4
BATCHES = [pytest.param(4, id="batch==T"), pytest.param(3, id="batch!=T")]
LAM = 0.5  # LIF τ 2


def lif(tau=2.0, **kw):
    return neuron.LIFNode(tau=tau, decay_input=False, v_reset=None, step_mode="m", **kw)


def seq(batch, feat=6, seed=0, steps=T):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(steps, batch, feat, generator=g, dtype=torch.float64) * 2


def built(cls, batch, *args, seed=0):
    torch.manual_seed(seed)
    net = cls(*args).double()
    functional.set_step_mode(net, "m")
    x = seq(batch, seed=seed)
    return ready(net, x, "m"), x


# --------------------------------------------------------------------------- time is tracked


class InPlaceLoop(nn.Module):
    """After a neuron, the forward loops over time and writes into its sequence in place (each
    step gets half of the previous one), then a linear layer and a neuron."""

    def __init__(self):
        super().__init__()
        self.fc1, self.sn1 = layer.Linear(6, 8), lif()
        self.fc2, self.sn2 = layer.Linear(8, 8), lif()
        self.head = layer.Linear(8, 3)

    def forward(self, x):
        x_seq = self.sn1(self.fc1(x))
        for t in range(x_seq.shape[0] - 1):
            x_seq[t + 1] = x_seq[t + 1] + 0.5 * x_seq[t]
        return self.head(self.sn2(self.fc2(x_seq)))


@pytest.mark.parametrize("batch", BATCHES)
def test_a_loop_writing_into_its_sequence_in_place_is_exact(float64, batch):
    """Plain: step t+1 of the spike sequence becomes s[t+1] + 0.5·(written) s[t], so the values
    fed to fc2 mix steps. SAF-E must give the plain outputs whether or not batch == T (fe87f08
    guessed time from shape[0] % T: wrong by 0.58 at batch == T, refused at batch != T)."""
    net, x = built(InPlaceLoop, batch)
    assert_exact(net, x, "m")


def test_check_does_not_call_a_wrong_route_exact(float64):
    """check(net, x) on the in-place loop at batch == T: if it reports every operation exact,
    running the model under SAF-E must be exact; and the operations written in the loop (they
    mix steps) must not be reported as running on accumulations (fe87f08 reported mul and add
    "on accumulations" and the run differed by 0.58)."""
    net, x = built(InPlaceLoop, T)
    findings = saf_plugin.check(net, x)
    assert all(f.status == "exact" for f in findings), [f.line() for f in findings]
    loop = root_routes(findings)
    assert loop, "check reported no operation of the loop"
    assert all("on accumulations" not in r for r in loop.values()), loop
    assert_exact(net, x, "m")


@pytest.mark.parametrize("soft", [pytest.param(False, id="as-is"),
                                  pytest.param(True, id="soft-reset")])
def test_spikingjelly_example_csnn_at_T_equal_batch(float64, soft):
    """SpikingJelly's examples/conv_fashion_mnist CSNN (used as it is: it repeats a static image
    [N, C, H, W] T times itself and returns the firing rate mean(0)) with N == T: SAF-E equals
    the plain model (hard reset: neurons per step; soft reset: the closed form)."""
    torch.manual_seed(0)
    net = CM._csnn_class()(T=3, channels=4).double()
    if soft:
        for m in net.modules():
            if isinstance(m, neuron.BaseNode):
                m.v_reset = None
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 28, 28, generator=g, dtype=torch.float64)  # N == T == 3
    ready(net, x, "m", whole=True, first=None)
    assert_exact(net, x, "m", whole=True)


# --------------------------------------------------------------------------- across time


class MeanHead(nn.Module):
    """A head on time-averaged features: head(sn(fc(x)).mean(0)) (MS-ResNet, Spike-driven
    Transformer, QKFormer end this way)."""

    def __init__(self):
        super().__init__()
        self.fc, self.sn = layer.Linear(6, 8), lif()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.sn(self.fc(x)).mean(0))


class ConvAcrossTime(nn.Module):
    """A Conv1d over the time axis after permute ([T, B, C] -> [B, C, T]), then back into a
    neuron (a speech-commands-style temporal convolution)."""

    def __init__(self):
        super().__init__()
        self.fc, self.sn1 = layer.Linear(6, 8), lif()
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.sn2 = lif()
        self.head = layer.Linear(8, 3)

    def forward(self, x):
        h = self.sn1(self.fc(x))
        h = self.conv(h.permute(1, 2, 0)).permute(2, 0, 1)
        return self.head(self.sn2(h))


class Decoder(nn.Module):
    """A decoder over time of a non-spiking readout: max or mean over the steps."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.fc, self.sn = layer.Linear(6, 8), lif()
        self.readout = layer.Linear(8, 3)

    def forward(self, x):
        o = self.readout(self.sn(self.fc(x)))
        return o.max(0)[0] if self.how == "max" else o.mean(0)


class MembraneDecoder(nn.Module):
    """A decoder over time of the last neuron layer's membrane (store_v_seq): max or mean."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.fc, self.sn = layer.Linear(6, 8), lif()
        self.fc2, self.out = layer.Linear(8, 3), lif(store_v_seq=True)

    def forward(self, x):
        self.out(self.fc2(self.sn(self.fc(x))))
        v = self.out.v_seq
        return v.max(0)[0] if self.how == "max" else v.mean(0)


class StackLoop(nn.Module):
    """The forward loops over time itself and stacks the steps: stack([fc(x[t]) for t])."""

    def __init__(self):
        super().__init__()
        self.fc, self.sn = nn.Linear(6, 8), lif()
        self.head = layer.Linear(8, 3)

    def forward(self, x):
        h = torch.stack([self.fc(x[t]) for t in range(x.shape[0])])
        return self.head(self.sn(h))


ACROSS = [
    pytest.param(MeanHead, (), id="head-on-mean-over-time"),
    pytest.param(ConvAcrossTime, (), id="conv1d-across-time"),
    pytest.param(Decoder, ("max",), id="max-over-time-of-readout"),
    pytest.param(Decoder, ("mean",), id="mean-over-time-of-readout"),
    pytest.param(MembraneDecoder, ("max",), id="max-over-time-of-membrane"),
    pytest.param(MembraneDecoder, ("mean",), id="mean-over-time-of-membrane"),
    pytest.param(StackLoop, (), id="loop-and-stack"),
]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("cls,args", ACROSS)
def test_operations_across_time_are_exact(float64, cls, args, batch):
    """Plain: the model mixes, reduces or re-stacks the steps of its sequence. SAF-E must run
    the operation on the real per-step sequence and equal the plain outputs within 1e-9, at
    batch == T and batch != T (fe87f08 refused most of these at batch != T: "first dimension is
    no longer time-major"; the membrane decoders crashed on v_seq = None)."""
    net, x = built(cls, batch, *args)
    assert_exact(net, x, "m")


# --------------------------------------------------------------------------- gradient


def _trace_linear(module: nn.Module, s: torch.Tensor, trace: torch.Tensor) -> torch.Tensor:
    """Value module(s); weight gradient from module(trace); input gradient to s."""
    through = trace.detach() + (s - s.detach())
    for_grad = module(through)
    with torch.no_grad():
        value = module(s)
    return for_grad + (value - for_grad).detach()


def mean_head_reference(net: MeanHead, x: torch.Tensor, target: torch.Tensor):
    """SAF-E's rule written by hand for head(sn(fc(x)).mean(0)), nothing of saf-plugin: fc
    takes its value from x[t] and its weight gradient from the trace â[t] = λ â[t−1] + x[t];
    the neuron runs one step at a time with its state detached after every step; the mean over
    time is differentiated as the plain op on the per-step spikes; head (on a time-free value)
    gets the plain gradient. One loss, one backward."""
    functional.reset_net(net)
    net.zero_grad()
    acc, traces = None, []
    for xt in x:
        acc = xt if acc is None else LAM * acc + xt
        traces.append(acc)
    current = _trace_linear(net.fc, x, torch.stack(traces))
    spikes = []
    for it in current:
        spikes.append(net.sn.single_step_forward(it))
        net.sn.detach()
    out = net.head(torch.stack(spikes).mean(0))
    F.cross_entropy(out, target).backward()
    functional.reset_net(net)
    return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("batch", BATCHES)
def test_gradient_through_a_mean_over_time_equals_the_reference(float64, batch):
    """SAF-E, step mode 'm', loss on head(sn(fc(x)).mean(0)): every parameter's gradient equals
    the hand-written reference (mean_head_reference) within 1e-12, and the reference is not
    plain BPTT (else the test could not tell the rules apart)."""
    net, x = built(MeanHead, batch)
    target = torch.randint(0, 3, (batch,), generator=torch.Generator().manual_seed(1))
    saf = copy.deepcopy(net)
    ref_out, ref = mean_head_reference(net, x, target)
    torch.testing.assert_close(ref_out, run_seq(net, x, "m")[0].detach(), rtol=0, atol=1e-12)

    functional.reset_net(net)
    net.zero_grad()
    F.cross_entropy(net(x), target).backward()  # BPTT
    bptt = {n: p.grad.clone() for n, p in net.named_parameters()}
    assert float((bptt["fc.weight"] - ref["fc.weight"]).abs().max()) > 1e-6, "vacuous"

    saf_plugin.set_saf(saf, "E")
    functional.reset_net(saf)
    saf.zero_grad()
    out = saf(x)
    torch.testing.assert_close(out.detach(), ref_out, rtol=0, atol=1e-9)
    F.cross_entropy(out, target).backward()
    for n, p in saf.named_parameters():
        assert ref[n].abs().max() > 0, f"{n}: no gradient in the reference (vacuous)"
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-9, atol=1e-12,
                                   msg=lambda m, n=n: f"{n}: {m}")
