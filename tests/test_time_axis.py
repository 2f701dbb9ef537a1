"""Issue 19, "Time is tracked, not guessed" and "Operations across time run exactly in step mode
'm'": which dimension of a tensor is time must be known from where the sequence entered and
what each operation did to it, never inferred from sizes (a batch of T samples is not T steps).

- models whose forward writes into its sequence, mixes steps (mean or max over time, a
  convolution across time after ``permute``, a head on time-averaged features, a loop over steps
  that stacks them), each at batch == T and batch != T: SAF-E equals the plain model within
  1e-9 (float64, every neuron layer firing) and reverts bit for bit;
- ``check(net, x)`` never calls a wrong route exact;
- SAF-E's gradient through an operation across time equals a hand-written reference (OTTT's
  rule with the operation differentiated as the plain op on the per-step values);
- the pure rules of ``saf_plugin/timeaxis.py`` against a brute-force oracle that finds, by
  perturbing one step at a time, which step every output element depends on.
"""

from __future__ import annotations

import copy
import itertools

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


# --------------------------------------------------------------------------- timeaxis rules
# The oracle knows nothing of saf_plugin: it builds a tensor whose time axis is at a known
# place, perturbs one step at a time, and sees which output elements change.

TS, BS, CS = 3, 3, 2  # batch == T on purpose: sizes cannot tell the dims apart


def _timeaxis():
    from saf_plugin import timeaxis  # imported here so the models above run on older trees

    return timeaxis


def step_index(shape, time):
    """The step of every element of a tensor of ``shape`` with layout ``time = (dim, inner)``."""
    d, inner = time
    idx = torch.arange(shape[d]) // inner
    return idx.view([-1 if i == d else 1 for i in range(len(shape))]).expand(shape)


def oracle(op, shape, time, steps=TS):
    """What op does to time, found by brute force: "mix" (an output depends on more than one
    step), (dim, inner) (every output depends on one step and the steps form the outer factor
    of one dim, in order, all of them), or "none" (steps picked, reordered, dropped, folded)."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y0 = op(x)
    where = step_index(shape, time)
    deps = torch.zeros((steps,) + tuple(y0.shape), dtype=torch.bool)
    r = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5  # uneven: softmax sees it
    for t in range(steps):
        for sign in (1.0, -1.0):  # +/-: a max or a min sees the perturbed step either way
            deps[t] |= op(x + sign * 1e3 * r * (where == t)) != y0
    count = deps.sum(0)
    if bool((count > 1).any()):
        return "mix"
    if bool((count == 0).any()):
        return "none"
    step_of = deps.to(torch.int64).argmax(0)
    for d, n in enumerate(y0.shape):
        if n % steps == 0 and torch.equal(step_of, step_index(y0.shape, (d, n // steps))):
            return d, n // steps
    return "none"


def _touch_or_layout(got, want, TOUCH):
    """A rule that may answer TOUCH (run per step, always exact): a layout it names must be the
    true one; where steps are mixed, picked or reordered it must answer TOUCH."""
    if want in ("mix", "none"):
        assert got == TOUCH, (got, want)
    else:
        assert got in (want, TOUCH), (got, want)


SHAPES = [  # (shape, time layout)
    ((TS, BS, CS), (0, 1)),
    ((BS, TS, CS), (1, 1)),
    ((BS, CS, TS), (2, 1)),
    ((TS * BS, CS), (0, BS)),
    ((BS, TS * CS), (1, CS)),
]


@pytest.mark.parametrize("shape,time", SHAPES)
def test_timeaxis_reshape_rule_matches_brute_force(shape, time):
    """reshaped(): where a reshape puts the time axis, or None when it folds it inside a
    dimension, for every way of regrouping the elements of small tensors with batch == T."""
    ta = _timeaxis()
    n = 1
    for s in shape:
        n *= s
    outs = set()
    for k in (1, 2, 3):
        for dims in itertools.product([1, 2, 3, 4, 6, 9, 12, 18], repeat=k):
            p = 1
            for s in dims:
                p *= s
            if p == n:
                outs.add(dims)
    assert len(outs) > 5
    for out in sorted(outs):
        want = oracle(lambda x, out=out: x.reshape(out), shape, time)
        got = ta.reshaped(time, shape, out, TS)
        assert got == (None if want == "none" else want), (shape, time, out, got, want)


@pytest.mark.parametrize("shape,time", SHAPES[:3])
def test_timeaxis_permute_transpose_movedim_rules_match_brute_force(shape, time):
    """permuted(), swapped(), moved(): time goes where its dimension goes."""
    ta = _timeaxis()
    nd = len(shape)
    for order in itertools.permutations(range(nd)):
        want = oracle(lambda x, o=order: x.permute(o), shape, time)
        assert ta.permuted(time, order) == want, (order, want)
        neg = [o - nd for o in order]
        assert ta.permuted(time, neg) == want, (neg, want)
    for a, b in itertools.combinations(range(-nd, nd), 2):
        want = oracle(lambda x, a=a, b=b: x.transpose(a, b), shape, time)
        assert ta.swapped(time, a, b, nd) == want, (a, b, want)
    for src, dst in itertools.product(range(nd), repeat=2):
        want = oracle(lambda x, s=src, d=dst: x.movedim(s, d), shape, time)
        assert ta.moved(time, src, dst, nd) == want, (src, dst, want)


@pytest.mark.parametrize("shape,time", SHAPES[:3])
def test_timeaxis_reduce_and_along_rules_match_brute_force(shape, time):
    """reduced() (sum, mean, amax over dims, keepdim or not) and along() (softmax, cumsum,
    flip): TOUCH exactly when the operation works over the time axis; else the true layout."""
    ta = _timeaxis()
    nd = len(shape)
    dims = [d for d in range(-nd, nd)] + [(0, 1), (1, 2), (0, 2), (-1, 0), None]
    for dim, keep in itertools.product(dims, (False, True)):
        for name in ("sum", "mean", "amax"):
            if dim is None and keep:
                continue

            def op(x, name=name, dim=dim, keep=keep):
                if dim is None:
                    return getattr(torch, name)(x).reshape(1)
                return getattr(torch, name)(x, dim=dim, keepdim=keep)
            want = oracle(op, shape, time)
            got = ta.reduced(time, dim, nd, keep)
            if want == "mix":
                assert got == ta.TOUCH, (name, dim, keep, got)
            else:
                assert got == want, (name, dim, keep, got, want)
    for d in range(-nd, nd):
        for op in (lambda x, d=d: torch.softmax(x, d), lambda x, d=d: torch.cumsum(x, d),
                   lambda x, d=d: torch.flip(x, (d,))):
            want = oracle(op, shape, time)
            got = ta.along(time, d, nd)
            _touch_or_layout(got, want, ta.TOUCH)
            if want not in ("mix", "none"):
                assert got == want


@pytest.mark.parametrize("shape,time", SHAPES[:3])
def test_timeaxis_index_and_select_rules_match_brute_force(shape, time):
    """indexed() and selected(): picking, slicing or reordering steps is TOUCH; indexing other
    dims keeps the true layout; never a wrong layout."""
    ta = _timeaxis()
    nd = len(shape)
    items = [0, 1, -1, slice(None), slice(1, None), slice(None, None, 2), None, Ellipsis,
             torch.tensor(1), [0, 2], torch.tensor([2, 0, 1])]
    for k in (1, 2, 3):
        for idx in itertools.product(items, repeat=k):
            if sum(i is Ellipsis for i in idx) > 1:
                continue
            consumed = sum(0 if (i is None or i is Ellipsis) else 1 for i in idx)
            if consumed > nd or sum(isinstance(i, list) or (torch.is_tensor(i) and i.dim())
                                    for i in idx) > 1:
                continue
            op = lambda x, idx=idx: x[idx if len(idx) > 1 else idx[0]]  # noqa: E731
            try:
                op(torch.zeros(shape))
            except (IndexError, TypeError, RuntimeError):
                continue
            want = oracle(op, shape, time)
            got = ta.indexed(time, idx if len(idx) > 1 else idx[0], nd)
            _touch_or_layout(got, want, ta.TOUCH)
            plain = all(isinstance(i, (int, slice)) or i is None or i is Ellipsis for i in idx)
            if plain and want not in ("mix", "none"):  # basic indexing is followed exactly
                assert got == want, (idx, got, want)
    for d in range(-nd, nd):
        for keeps, op in ((False, lambda x, d=d: x.select(d, 1)),
                          (True, lambda x, d=d: x.narrow(d, 0, 2))):
            want = oracle(op, shape, time)
            got = ta.selected(time, d, nd, keeps)
            _touch_or_layout(got, want, ta.TOUCH)
            if want not in ("mix", "none"):
                assert got == want, (d, keeps, got, want)


def test_timeaxis_broadcast_and_shift_rules_match_brute_force():
    """broadcast(): an element-wise result of two tagged operands keeps the time layout when
    both put time in the same place, else None (steps would mix); shifted(): broadcasting
    against a bigger untagged tensor moves time right by the new leading dims."""
    ta = _timeaxis()
    shape, time = (TS, BS, CS), (0, 1)
    cases = [  # second operand made from x, its layout, expected: aligned or not
        (lambda x: x, time, 3),
        (lambda x: x.transpose(0, 1), (1, 1), 3),  # batch == T: sizes agree, steps do not
        (lambda x: x.sum(2, keepdim=True), time, 3),
        (lambda x: x[None], (1, 1), 4),
        (lambda x: x.permute(1, 0, 2)[None], (2, 1), 4),
    ]
    for other, other_time, out_nd in cases:
        want = oracle(lambda x, o=other: x + o(x), shape, time)
        got = ta.broadcast([(time, 3), (other_time, len(other(torch.zeros(shape)).shape))],
                           out_nd)
        assert got == (None if want in ("mix", "none") else want), (other_time, got, want)
    for lead in (1, 2):
        big = torch.zeros((5,) * lead + shape)
        want = oracle(lambda x, big=big: x + big, shape, time)
        assert ta.shifted(time, lead) == want


def test_timeaxis_constant_varies_along_time_matches_brute_force():
    """constant_varies_along_time(): a constant broadcast against a tagged tensor changes from
    step to step exactly when its aligned dimension reaches the time axis with a size > 1."""
    ta = _timeaxis()
    g = torch.Generator().manual_seed(5)
    for shape, time in SHAPES[:3]:
        nd = len(shape)
        for k in range(1, nd + 2):
            for cshape in itertools.product(*[(1, s) for s in ((7,) * (k - nd) + shape)[-k:]]):
                c = torch.rand(cshape, generator=g, dtype=torch.float64)
                full = torch.broadcast_shapes(cshape, shape)
                out_time = (time[0] + len(full) - nd, time[1])
                cb = torch.broadcast_to(c, full).unflatten(out_time[0], (TS, out_time[1]))
                varies = any(not torch.equal(cb.select(out_time[0], t),
                                             cb.select(out_time[0], 0)) for t in range(TS))
                assert ta.constant_varies_along_time(time, nd, cshape) == varies, (shape,
                                                                                    cshape)


def test_timeaxis_rows_unflattens_time_and_inner():
    """rows(): unflatten with it gives [.., T, inner, ..] with the step on the T dim."""
    ta = _timeaxis()
    for shape, time in SHAPES:
        x = step_index(shape, time).to(torch.float64)
        d, sizes = ta.rows(time, TS)
        y = x.unflatten(d, sizes)
        assert torch.equal(y, step_index(y.shape, (d, 1)).to(torch.float64)), (shape, time)
