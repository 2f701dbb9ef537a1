"""saf_plugin.timeaxis on its own: the rules that say where the time axis of a tensor is after
an operation in step mode 'm' (reshape, permute, index, reduce, broadcast), against a
brute-force oracle that knows nothing of saf_plugin: it builds a tensor whose time axis is at
a known place, perturbs one step at a time, and sees which output elements change. Whole
models with operations across time: tests/test_time_axis.py."""

from __future__ import annotations

import itertools

import pytest
import torch

from saf_plugin import timeaxis

TS, BS, CS = 3, 3, 2  # batch == T on purpose: sizes cannot tell the dims apart


def _timeaxis():
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
