"""Lifecycle: what a user does to a model between and within sequences.

- ``set_saf(net, None)`` in the middle of a sequence: the model continues exactly like the plain
  model (closed-form and hard-reset SpikingJelly neurons, snnTorch ``Leaky``);
- ``set_saf(net, "E")`` again in the middle of a sequence: exact, or refused with SAFStateError
  at the next call and exact after ``functional.reset_net``;
- ``copy.deepcopy`` / ``torch.save`` + ``torch.load`` of a SAF model in the middle of a sequence:
  the copy continues exactly or refuses with a SAFStateError that says it is a copy, and after a
  reset it is exact; the original continues exactly;
- ``train()`` / ``eval()`` between sequences, step modes 's' and 'm', with SpikingJelly's
  BatchNorm1d/2d and Dropout and with snnTorch-style ``nn.BatchNorm1d`` + ``Leaky``: every
  phase equals the plain model;
- a step refused in the middle of a sequence leaves BatchNorm's buffers as they were;
- ``train_step`` with T = 0 raises ValueError (SAF-E and SAF-F), as the plain model does;
- ``set_saf`` on a ``torch.compile`` wrapper switches the model it compiles, and back.

float64 (snnTorch: float32, whose spikes must be equal exactly), every neuron layer firing.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import saf_plugin
from corpus_harness import Case, SEED, assert_acceptable, judge, neurons
from exactness import assert_close_list, plain_with_rates, ready, reset, run_seq

T, B, K = 6, 3, 3  # K: the step after which something happens mid-sequence


def seq(shape=(6,), seed=0, dtype=torch.float64, steps=T):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(steps, B, *shape, generator=g) * 2).to(dtype)


def sj_chain(step_mode="s", hard=False):
    """Linear-LIF-Linear-LIF-Linear; soft reset (the closed form) or hard reset (per step)."""
    kw = {} if hard else dict(v_reset=None)
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(6, 8), neuron.LIFNode(tau=2.0, **kw),
                        layer.Linear(8, 8), neuron.LIFNode(tau=2.0, **kw),
                        layer.Linear(8, 3)).double()
    functional.set_step_mode(net, step_mode)
    x = seq()
    return ready(net, x, step_mode), x


def snn_chain(step_mode="s"):
    """snnTorch tutorial style: nn.Linear and Leaky(init_hidden=True), float32."""
    import snntorch as snn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), snn.Leaky(beta=0.5, init_hidden=True),
                        nn.Linear(8, 8), snn.Leaky(beta=0.5, init_hidden=True),
                        nn.Linear(8, 3))
    x = seq(dtype=torch.float32)
    return ready(net, x, step_mode), x


class Spikes:
    """Every neuron's outputs, per neuron in call order (to compare snnTorch spikes exactly);
    ``seq(step_mode)``: per neuron, the steps as one [T, ...] tensor."""

    def __init__(self, net):
        self.out: dict[str, list] = {}
        self.hooks = [m.register_forward_hook(
            lambda mod, a, o, name=name: self.out.setdefault(name, []).append(
                (o[0] if isinstance(o, tuple) else o).detach()))
            for name, m in neurons(net)]

    def seq(self, step_mode):
        join = torch.cat if step_mode == "m" else torch.stack
        return {k: join(v) for k, v in self.out.items()}

    def remove(self):
        for h in self.hooks:
            h.remove()


def assert_same_spikes(got: dict, ref: dict, where=""):
    assert got.keys() == ref.keys() and ref, (where, sorted(got), sorted(ref))
    for k in ref:
        assert torch.equal(got[k], ref[k]), f"{where}: spikes of {k} differ"


def compare(got, ref, dtype):
    assert_close_list(got, ref, 1e-9 if dtype == torch.float64 else 1e-5)


def split_run(net, x, step_mode, between, k=K):
    """Reset, run steps [0, k), call ``between(net)``, run steps [k, T); outputs [T, ...]."""
    reset(net)
    torch.manual_seed(SEED)
    if step_mode == "m":
        first = [net(x[:k])]
        between(net)
        return torch.cat(first + [net(x[k:])]).detach()
    first = [net(xt) for xt in x[:k]]
    between(net)
    return torch.stack(first + [net(xt) for xt in x[k:]]).detach()


KINDS = [
    pytest.param("sj-closed-form", "s", id="sj-closed-form-s"),
    pytest.param("sj-closed-form", "m", id="sj-closed-form-m"),
    pytest.param("sj-hard-reset", "s", id="sj-hard-reset-s"),
    pytest.param("snntorch-leaky", "s", id="snntorch-leaky-s"),
]


def build(kind, step_mode):
    if kind == "snntorch-leaky":
        return snn_chain(step_mode)
    return sj_chain(step_mode, hard=(kind == "sj-hard-reset"))


# --------------------------------------------------------------------------- switching


@pytest.mark.parametrize("kind,step_mode", KINDS)
def test_switching_off_mid_sequence_continues_like_the_plain_model(kind, step_mode):
    """Plain: one sequence of T steps. SAF-E for the first K steps, then set_saf(net, None) and
    the plain model for the rest: every output equals the plain run (the plain neurons continue
    from the true membrane; fe87f08 left a closed-form neuron's v at 0.0: off by 0.30)."""
    net, x = build(kind, step_mode)
    rec = Spikes(net)
    ref = plain_with_rates(net, x, step_mode)[0]
    ref_spikes, rec.out = rec.seq(step_mode), {}
    saf_plugin.set_saf(net, "E")
    got = split_run(net, x, step_mode, lambda n: saf_plugin.set_saf(n, None))
    rec.remove()
    assert saf_plugin.saf_mode(net) is None
    compare([got], [ref], x.dtype)
    assert_same_spikes(rec.seq(step_mode), ref_spikes)


SWITCH_ON = [pytest.param(kind, sm, first, id=f"{kind}-{sm}-after-{first or 'plain'}")
             for kind, sm in (p.values for p in KINDS) for first in ("E", None)]


@pytest.mark.parametrize("kind,step_mode,first", SWITCH_ON)
def test_switching_on_mid_sequence_is_exact_or_refused_until_reset(kind, step_mode, first):
    """K steps under SAF-E (or plainly: ``first`` None), then set_saf(net, "E"): the next call
    either continues exactly like the plain model or raises SAFStateError (saying to reset);
    after functional.reset_net the whole sequence is exact (fe87f08 continued a closed-form
    model under SAF-E again: off by 0.30)."""
    net, x = build(kind, step_mode)
    ref = plain_with_rates(net, x, step_mode)[0]
    saf_plugin.set_saf(net, first)
    try:
        refused = []

        def again(n):
            try:
                saf_plugin.set_saf(n, "E")
            except saf_plugin.SAFStateError as e:
                refused.append(e)

        try:
            got = split_run(net, x, step_mode, again)
        except saf_plugin.SAFStateError as e:
            refused.append(e)
        if refused:
            assert "reset" in str(refused[0]), str(refused[0])
        else:
            compare([got], [ref], x.dtype)
        assert saf_plugin.saf_mode(net) == "E"
        compare(run_seq(net, x, step_mode), [ref], x.dtype)  # after a reset: exact
    finally:
        saf_plugin.set_saf(net, None)


def _copy(net, how):
    if how == "deepcopy":
        return copy.deepcopy(net)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


COPIES = [pytest.param(kind, sm, how, id=f"{kind}-{sm}-{how}")
          for kind, sm in (p.values for p in KINDS) for how in ("deepcopy", "pickle")
          # snnTorch's default surrogate (atan's local function) cannot be pickled, plain or not
          if not (kind == "snntorch-leaky" and how == "pickle")]


@pytest.mark.parametrize("kind,step_mode,how", COPIES)
@torch.no_grad()  # a plain model mid-sequence holds membranes with a graph: no deepcopy then
def test_a_copy_made_mid_sequence_is_exact_or_refused_until_reset(kind, step_mode, how):
    """A SAF-E model is copied (copy.deepcopy, or torch.save + torch.load) after K steps. The
    original continues exactly. The copy's next call either continues exactly or raises a
    SAFStateError that names the copy; after a reset the copy runs a whole sequence exactly
    (fe87f08: the copy of a closed-form model continued from v = 0.0, off by 0.30)."""
    net, x = build(kind, step_mode)
    ref = plain_with_rates(net, x, step_mode)[0]
    saf_plugin.set_saf(net, "E")
    copies = []
    try:
        got = split_run(net, x, step_mode, lambda n: copies.append(_copy(n, how)))
        compare([got], [ref], x.dtype)  # the original continues
        (c,) = copies
        assert saf_plugin.saf_mode(c) == "E"
        torch.manual_seed(SEED)
        try:
            rest = c(x[K:]) if step_mode == "m" else torch.stack([c(xt) for xt in x[K:]])
        except saf_plugin.SAFStateError as e:
            assert "copy" in str(e), str(e)
        else:
            compare([rest.detach()], [ref[K:]], x.dtype)
        compare(run_seq(c, x, step_mode), [ref], x.dtype)
    finally:
        saf_plugin.set_saf(net, None)


# --------------------------------------------------------------------------- train / eval


def sj_bn1d():
    return nn.Sequential(layer.Linear(6, 8), layer.BatchNorm1d(8),
                         neuron.LIFNode(tau=2.0, v_reset=None), layer.Linear(8, 3))


def sj_bn2d():
    return nn.Sequential(layer.Conv2d(2, 4, 3, padding=1), layer.BatchNorm2d(4),
                         neuron.LIFNode(tau=2.0, v_reset=None), layer.Flatten(),
                         layer.Linear(4 * 4 * 4, 3))


def sj_dropout():
    return nn.Sequential(layer.Linear(6, 8), neuron.LIFNode(tau=2.0, v_reset=None),
                         layer.Dropout(0.3), layer.Linear(8, 8),
                         neuron.LIFNode(tau=2.0, v_reset=None), layer.Linear(8, 3))


def snn_bn():
    import snntorch as snn

    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8),
                         snn.Leaky(beta=0.5, init_hidden=True), nn.Linear(8, 3))


TRAIN_EVAL = [
    pytest.param(sj_bn1d, "s", id="sj-BatchNorm1d-s"),
    pytest.param(sj_bn1d, "m", id="sj-BatchNorm1d-m"),
    pytest.param(sj_bn2d, "s", id="sj-BatchNorm2d-s"),
    pytest.param(sj_bn2d, "m", id="sj-BatchNorm2d-m"),
    pytest.param(sj_dropout, "s", id="sj-Dropout-s"),
    pytest.param(sj_dropout, "m", id="sj-Dropout-m"),
    pytest.param(snn_bn, "s", id="snntorch-BatchNorm1d-Leaky-s"),
]
PHASES = [True, False, True, False]  # train, eval, train, eval: one sequence each


def _train_eval_model(factory, step_mode):
    torch.manual_seed(0)
    net = factory()
    snn_model = factory is snn_bn
    if not snn_model:
        net = net.double()
        functional.set_step_mode(net, step_mode)
    shape = (2, 4, 4) if factory is sj_bn2d else (6,)
    xs = [seq(shape, seed=i, dtype=torch.float32 if snn_model else torch.float64)
          for i in range(len(PHASES))]
    return ready(net, xs[0], step_mode), xs


def _phases(net, xs, step_mode, check_fires=False):
    outs, spikes = [], []
    for training, x in zip(PHASES, xs):
        net.train(training)
        rec = Spikes(net)
        try:
            if check_fires:
                outs.append(plain_with_rates(net, x, step_mode)[0])
            else:
                outs.append(run_seq(net, x, step_mode)[0].detach())
        finally:
            rec.remove()
        spikes.append(rec.seq(step_mode))
    buffers = {k: v.clone() for k, v in net.state_dict().items() if "running" in k
               or "num_batches" in k}
    return outs, spikes, buffers


@pytest.mark.parametrize("factory,step_mode", TRAIN_EVAL)
def test_train_eval_between_sequences_equals_the_plain_model(factory, step_mode):
    """Online training validated after each epoch: sequences in train, eval, train, eval mode.
    Plain: BatchNorm uses batch statistics in train mode and its running statistics in eval;
    Dropout masks in train mode only. SAF-E: every phase's outputs equal the plain model's
    (snnTorch float32: its spikes exactly), BatchNorm's running statistics end equal, and the
    model is still switched (fe87f08 failed at step 1 of the sequence after the first switch
    in step mode 's': a SAFStateError blaming data-dependent control flow for BatchNorm, and a
    refusal that switched the model back for Dropout)."""
    net, xs = _train_eval_model(factory, step_mode)
    start = copy.deepcopy(net.state_dict())
    ref, ref_spikes, ref_buffers = _phases(net, xs, step_mode, check_fires=True)
    net.load_state_dict(start)
    saf_plugin.set_saf(net, "E")
    try:
        got, spikes, buffers = _phases(net, xs, step_mode)
        assert saf_plugin.saf_mode(net) == "E"
    finally:
        saf_plugin.set_saf(net, None)
    for phase, (g, r) in enumerate(zip(got, ref)):
        compare([g], [r], xs[0].dtype)
        assert_same_spikes(spikes[phase], ref_spikes[phase], f"phase {phase}")
    for k in ref_buffers:
        torch.testing.assert_close(buffers[k], ref_buffers[k], rtol=0,
                                   atol=1e-12 if xs[0].dtype == torch.float64 else 1e-6)


# --------------------------------------------------------------------------- refused steps


class ChangesAtStep2(nn.Module):
    """Linear, BatchNorm (train mode), LIF, head; at its third call the forward scales the spikes
    by a factor computed from the head's weight (its operations change from step to step)."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn = layer.Linear(6, 8), layer.BatchNorm1d(8)
        self.sn, self.head = neuron.LIFNode(tau=2.0, v_reset=None), layer.Linear(8, 3)
        self.t = 0

    def forward(self, x):
        h = self.sn(self.bn(self.fc(x)))
        if self.t == 2:
            h = torch.sigmoid(self.head.weight.sum()) * h
        self.t += 1
        return self.head(h)


def test_a_step_refused_mid_sequence_leaves_batchnorm_buffers_as_they_were(float64):
    """SAF-E refuses the third step (the data flow changed: SAFStateError); BatchNorm ran in
    that call before the refusal, but its running_mean, running_var and num_batches_tracked
    must be as before the call (fe87f08 kept the refused call's update)."""
    torch.manual_seed(0)
    net = ChangesAtStep2().double()
    x = seq()
    saf_plugin.set_saf(net, "E")
    try:
        reset(net)
        net.t = 0
        net(x[0])
        net(x[1])
        before = {k: v.clone() for k, v in net.bn.named_buffers()}
        with pytest.raises(saf_plugin.SAFStateError, match="step to step|changed"):
            net(x[2])
        for k, v in net.bn.named_buffers():
            assert torch.equal(v, before[k]), f"{k} changed by a refused step"
    finally:
        saf_plugin.set_saf(net, None)


# --------------------------------------------------------------------------- train_step


@pytest.mark.parametrize("mode", ["E", "F"])
def test_train_step_with_no_time_step_raises_value_error(float64, mode):
    """train_step on a [0, B, ...] sequence: the plain model cannot run it, and SAF must raise
    ValueError too (fe87f08: SAF-E returned loss 0, SAF-F an UnboundLocalError)."""
    net, _ = sj_chain()
    saf_plugin.set_saf(net, mode)
    try:
        with pytest.raises(ValueError, match="T = 0|time step"):
            saf_plugin.train_step(net, torch.zeros(0, B, 6), torch.zeros(B, dtype=torch.long),
                                  F.cross_entropy)
    finally:
        saf_plugin.set_saf(net, None)


# --------------------------------------------------------------------------- torch.compile


def test_set_saf_on_a_torch_compile_wrapper(float64):
    """set_saf(torch.compile(net), "E") switches the model the wrapper compiles: saf_mode of
    wrapper and model is "E", outputs through the wrapper equal the plain model's; set_saf(
    wrapper, None) switches both back and the wrapper's forward is the plain one bit for bit
    (fe87f08: the wrapper stayed plain and its first call raised "a neuron of a SAF model was
    called on its own"). backend="eager": the wrapper and dynamo, without Inductor's compile
    time."""
    net, x = sj_chain()
    ref = plain_with_rates(net, x, "s")
    wrapper = torch.compile(net, backend="eager")
    saf_plugin.set_saf(wrapper, "E")
    try:
        assert saf_plugin.saf_mode(wrapper) == "E" and saf_plugin.saf_mode(net) == "E"
        got = [g.detach() for g in run_seq(wrapper, x, "s")]
        compare(got, ref, torch.float64)
    finally:
        saf_plugin.set_saf(wrapper, None)
    assert saf_plugin.saf_mode(wrapper) is None and saf_plugin.saf_mode(net) is None
    back = run_seq(wrapper, x, "s")
    assert all(torch.equal(a.detach(), b) for a, b in zip(back, ref))


# --------------------------------------------------------------------------- found on the way


class SpareNeuron(nn.Module):
    """A model with a neuron module its forward never calls (a configurable model's spare
    branch): plain, the spare neuron is simply unused."""

    def __init__(self):
        super().__init__()
        self.fc, self.sn = layer.Linear(6, 8), neuron.LIFNode(tau=2.0, v_reset=None)
        self.spare = neuron.LIFNode(tau=2.0, v_reset=None)
        self.head = layer.Linear(8, 3)

    def forward(self, x):
        return self.head(self.sn(self.fc(x)))


def test_a_neuron_the_forward_never_calls_does_not_break_a_sequence():
    """Exact, or refused before any output (switched back) naming the unused neuron."""
    def build(step_mode):
        torch.manual_seed(0)
        net = SpareNeuron().double()
        x = seq()
        return ready(net, x, step_mode), x

    case = Case("spare_neuron", build, step_modes=("s",),
                refuse=r"\bspare\b|never (ran|runs|called)|not called|unused")
    assert_acceptable(case, "E", judge(case, "E", "s"))
