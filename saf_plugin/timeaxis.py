"""Where the time axis of a tensor is, in step mode 'm', and where an operation moves it.

A sequence enters a step-mode-'m' model as [T, B, ...]: time is dimension 0. Every tensor the
engine tags carries its time layout, a :data:`Time` ``(dim, inner)``: time is the outer factor
of dimension ``dim``, whose size is T · ``inner`` (``inner`` = 1 for a plain time axis,
``inner`` = B for [T·B, ...] as ``SeqToANNContainer`` folds it), or ``None``: the tensor has no
time axis the engine can name (a mean over time, one step picked out of a sequence, a time axis
folded inside another dimension). The layout is computed from the operation and its arguments,
never guessed from sizes, so a batch of T samples cannot be mistaken for T steps.

The rules here are pure functions of shapes and arguments; the routes (:mod:`saf_plugin.runtime`)
use them to decide whether an operation keeps the time axis (a shape operation), mixes it (an operation
across time, run on the per-step sequence) or works along other dimensions only (a linear map
that can run on accumulations). See docs/theory.md ("Operations across time").
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

Time = Optional[tuple[int, int]]  # (dim, inner), or None: no time axis the engine can name
TOUCH = "touch"  # the operation selects, slices, repeats or reorders steps


def _dim(d, ndim: int) -> int:
    d = int(d)
    return d + ndim if d < 0 else d


def _dims(dim, ndim: int) -> Optional[list[int]]:
    """Normalised reduction dims (None: all dims)."""
    if dim is None:
        return None
    if isinstance(dim, (tuple, list)):
        return [_dim(d, ndim) for d in dim]
    return [_dim(dim, ndim)]


def reshaped(time: Time, shape: Sequence[int], out: Sequence[int], steps: int) -> Time:
    """The layout after a reshape (view, reshape, flatten, unflatten, squeeze, unsqueeze).

    Time keeps its place in the flat element order: the elements before it (their product P)
    and the step digit itself. In ``out`` it is the outer factor of the first dimension j whose
    preceding dims multiply to P and whose size is a multiple of T; if none, time is folded
    inside a dimension with something outside it ([B·T]): None."""
    if time is None:
        return None
    d, _ = time
    before = math.prod(shape[:d])
    acc = 1
    for j, size in enumerate(out):
        if acc == before and size % steps == 0 and size >= steps:
            return j, size // steps
        acc *= size
        if acc > before:
            return None
    return None


def permuted(time: Time, order: Sequence[int]) -> Time:
    """After ``permute(order)``: time goes where its dim goes."""
    if time is None:
        return None
    ndim = len(order)
    order = [_dim(o, ndim) for o in order]
    return order.index(time[0]), time[1]


def swapped(time: Time, a: int, b: int, ndim: int) -> Time:
    """After ``transpose(a, b)``."""
    if time is None:
        return None
    a, b = _dim(a, ndim), _dim(b, ndim)
    d = time[0]
    return (b if d == a else a if d == b else d), time[1]


def moved(time: Time, src, dst, ndim: int) -> Time:
    """After ``movedim(src, dst)``."""
    if time is None:
        return None
    src = [_dim(s, ndim) for s in (src if isinstance(src, (tuple, list)) else [src])]
    dst = [_dim(s, ndim) for s in (dst if isinstance(dst, (tuple, list)) else [dst])]
    order = [None] * ndim
    for s, t in zip(src, dst):
        order[t] = s
    rest = iter(i for i in range(ndim) if i not in src)
    order = [next(rest) if o is None else o for o in order]
    return permuted(time, order)


def shifted(time: Time, by: int) -> Time:
    """New leading dims (broadcasting, expand): the time dim moves right by ``by``."""
    return None if time is None else (time[0] + by, time[1])


def reduced(time: Time, dim, ndim: int, keepdim: bool):
    """After a reduction over ``dim``: :data:`TOUCH` if it reduces over time, else the layout
    with the reduced dims removed (kept with ``keepdim``)."""
    if time is None:
        return None
    dims = _dims(dim, ndim)
    if dims is None or time[0] in dims:
        return TOUCH
    if keepdim:
        return time
    return time[0] - sum(1 for d in dims if d < time[0]), time[1]


def along(time: Time, dim, ndim: int):
    """An operation along one dim that keeps the shape (softmax, cumsum, flip, sort):
    :data:`TOUCH` if the dim is time."""
    if time is None:
        return None
    return TOUCH if dim is None or _dim(dim, ndim) == time[0] else time


def indexed(time: Time, idx, ndim: int):
    """After ``x[idx]``: :data:`TOUCH` if the index picks or slices steps, else the layout.

    Basic indexing (ints, slices, None, Ellipsis) is followed dim by dim; advanced indices
    (tensors, lists, bools) are allowed after the time dim only."""
    if time is None:
        return None
    if not isinstance(idx, tuple):
        idx = (idx,)
    d = time[0]
    consumed = sum(0 if (i is None or i is Ellipsis) else 1 for i in idx)
    out_pos, in_pos = 0, 0
    for item in idx:
        if item is Ellipsis:
            skip = ndim - consumed
            if in_pos <= d < in_pos + skip:
                return d - in_pos + out_pos, time[1]
            in_pos += skip
            out_pos += skip
            continue
        if item is None:
            out_pos += 1
            continue
        if in_pos == d:
            if isinstance(item, slice) and item == slice(None):
                return out_pos, time[1]
            return TOUCH
        if isinstance(item, int) or (hasattr(item, "dim") and item.dim() == 0
                                     and not item.dtype.is_floating_point
                                     and str(item.dtype) != "torch.bool"):
            in_pos += 1
            continue
        if not isinstance(item, slice):
            return TOUCH  # an advanced index before time moves dims: leave it to per step
        in_pos += 1
        out_pos += 1
    return d - in_pos + out_pos, time[1]


def selected(time: Time, dim: int, ndim: int, keeps: bool):
    """``select`` / ``narrow`` / ``chunk`` ... along ``dim``: :data:`TOUCH` on the time dim;
    else the layout (``keeps``: the dim stays, as with ``narrow``; else it is removed)."""
    if time is None:
        return None
    dim = _dim(dim, ndim)
    if dim == time[0]:
        return TOUCH
    if keeps or dim > time[0]:
        return time
    return time[0] - 1, time[1]


def broadcast(layouts: Sequence[tuple[Time, int]], out_ndim: int) -> Time:
    """The layout of an element-wise result from its tagged operands' (layout, ndim): each
    operand's dims align to the right of the result; all must put time in the same place
    with the same inner size, else None."""
    found = None
    for time, ndim in layouts:
        if time is None:
            return None
        here = (time[0] + out_ndim - ndim, time[1])
        if found is not None and here != found:
            return None
        found = here
    return found


def constant_varies_along_time(time: Time, ndim: int, const_shape: Sequence[int]) -> bool:
    """Whether a constant broadcast against a tensor with layout ``time`` changes along the
    time axis (it reaches the time dim with a size other than 1): then a product or sum with
    it is not one map on accumulations."""
    if time is None:
        return False
    k = len(const_shape)
    pos = time[0] - (ndim - k)  # the constant's dim aligned with time
    return 0 <= pos < k and const_shape[pos] != 1


def rows(time: tuple[int, int], steps: int):
    """(dim, sizes) to ``unflatten`` a tensor with layout ``time`` into [.., T, inner, ..]."""
    return time[0], (steps, time[1])
