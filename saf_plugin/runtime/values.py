"""The values of the engine: accumulations, per-step values and the bias series.

An accumulation A[t] = Σ_k λ^k v[t−k] and its per-step value v[t] = A[t] − λ A[t−1]
(:meth:`Values.step_value`, de-accumulation) are two forms of one sequence; a per-step value is
accumulated where a linear map needs it (:meth:`Values.accumulated`); an additive constant β of
a linear map is scaled by the bias series c[t] = Σ_k λ^k (:meth:`Values.series`,
:meth:`Values._shift`). In step mode 's' a tensor holds one step; in 'm' its rows along its
time layout (:data:`saf_plugin.timeaxis.Time`) hold the T steps of a call.

With ``set_saf(..., accumulate=torch.float64)`` every accumulation is float64 and every
per-step value the model's dtype (:meth:`Values.high`, :meth:`Values.low`).

A mixin of :class:`saf_plugin.runtime.Runtime`: it reads the runtime's step (``t``,
``steps``, ``step_mode``, ``call``) and tags (``reps``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import core
from ..dataflow import ACC, SPIKE, Rep, Site
from ..modes import Mode


class Values:
    """Accumulate, de-accumulate, the bias series, the accumulation dtype."""

    def tag(self, x: Tensor, kind: str, **kw) -> Tensor:
        self.reps[x] = Rep(kind, self.call, self.t, **kw)
        return x

    def neuron_time(self, x: Tensor) -> Optional[tuple]:
        """The layout of a neuron's output: in step mode 'm' a neuron's time is dim 0 of its
        input, [T, B, ...], as the library's multi-step neuron has it."""
        return (0, 1) if self.step_mode == "m" and x.dim() > 0 else None

    def series(self, lam: float, like: Tensor, t: Optional[int] = None, since: int = 0) -> Tensor:
        """c[t] for the rows of this call, [steps] (or for step ``t`` alone, [1]), counted from
        the step ``since`` its accumulation started at: a slice of one tensor per (λ, dtype,
        device) that doubles in length when a sequence outgrows it, so a step costs no
        host-to-device copy (a synchronisation on CUDA)."""
        t0, steps = (self.t, self.steps) if t is None else (t, 1)
        t0 -= since
        return self._series_upto(lam, like, t0 + steps)[t0:t0 + steps]

    def series_now(self, lam: float, like: Tensor, since: int = 0,
                   t: Optional[int] = None) -> Tensor:
        """c[t] of this step (step mode 's'; or of step ``t``) as a 0-d tensor:
        ``series(...)[0]`` in one indexing operation."""
        t0 = (self.t if t is None else t) - since
        return self._series_upto(lam, like, t0 + 1)[t0]

    def _series_upto(self, lam: float, like: Tensor, n: int) -> Tensor:
        """The cached c[0..] for (λ, dtype, device), at least ``n`` long."""
        key = (float(lam), like.dtype, like.device)
        c = self._series.get(key)
        if c is None or c.shape[0] < n:
            if len(self._series) > 64:
                self._series.clear()
            c = self._series[key] = core.bias_series(0, max(64, 2 * n), lam, like=like)
        return c

    def _rows(self, x: Tensor, lam: float, fn, time, since: int = 0) -> Tensor:
        """fn(x_t, c[t]) for every time row of ``x`` (c a scalar in step mode 's'; in 'm' x is
        viewed as [.., T, inner, ..] along its layout ``time`` and c as [.., T, 1, ..])."""
        c = self.series(lam, x, since=since)
        if self.step_mode == "s":
            return fn(x, c[0])
        d, inner = time
        v = x.unflatten(d, (self.steps, inner))
        shape = [1] * v.dim()
        shape[d] = self.steps
        return fn(v, c.view(shape)).flatten(d, d + 1)

    def _shift(self, out: Tensor, shift, lam: float, time=None, fresh: bool = False,
               since: int = 0) -> Tensor:
        """out + (c[t] − 1) β, so that Y = A â + β c[t] when ``out`` = A â + β.

        SAF-E detaches the added part (a bias gets OTTT's gradient δ, not c[t] δ); SAF-F keeps
        it (the Spike Representation's gradient). ``fresh``: ``out`` is the new result of a
        linear map (whose backward never needs its output), so the shift is added in place.
        ``time``: the layout of ``out`` (step mode 'm'); β is constant along it. ``since``: the
        step the accumulation started at (c counts from there)."""
        if self.step_mode == "s":
            if self.t == since:
                return out
            c1 = core.series_value(lam, self.t - since) - 1.0  # a Python number: one operation
            if not torch.is_tensor(shift):
                return out + c1 * shift
            inplace = fresh and out._base is None and not (out.is_leaf and out.requires_grad)
            if self.mode == Mode.E:  # the added part carries no gradient
                with torch.no_grad():
                    if inplace:
                        return out.add_(shift, alpha=c1)
                    add = shift * c1
                return out + add
            return out.add_(shift, alpha=c1) if inplace else out.add(shift, alpha=c1)
        if self.mode == Mode.E and torch.is_tensor(shift):
            shift = shift.detach()
        if torch.is_tensor(shift):
            shift = _split_time(shift, out.dim(), time[0])
        if not (fresh and out._base is None and not (out.is_leaf and out.requires_grad)):
            return self._rows(out, lam, lambda v, c: v + (c - 1) * shift, time, since)
        c = self.series(lam, out, since=since) - 1
        d, inner = time  # added to out itself, not to a view
        shape = [1] * (out.dim() + 1)
        shape[d] = self.steps
        step = c.view(shape) * shift  # [.., T, 1, ..]: the graph keeps c, not T·B rows
        size = list(step.shape)
        size[d], size[d + 1] = self.steps, inner
        return out.add_(step.expand(size).flatten(d, d + 1))

    def step_value(self, x: Tensor, rep: Rep) -> Tensor:
        """The per-step value v[t] of a tagged tensor: an accumulation A made by a linear map
        (its output ``base``, then shape operations ``chain``) less the decayed previous
        step, v = A − chain(λ base[t−1]) with base[t−1] a constant (in step mode 'm' along the
        map's time layout). The subtraction is applied to the tensor itself, so whatever
        autograd attached to it (a custom Function that returned it) stays on v."""
        if rep.kind != ACC:
            return x
        rep.site.needs_prev = True
        if rep.seq > rep.since and rep.prev is None:
            raise self._lost(f"an accumulation made at {rep.site.where} is needed per step, "
                             "but its previous step was not kept")
        if self.step_mode == "s" or rep.call != self.call and x.dim() == 0:
            if rep.prev is None:
                return self.low(x)
            before = rep.decay * rep.prev.detach()
        else:
            base = x if rep.base is None else rep.base
            d, inner = rep.site.time
            seq = base.detach().unflatten(d, (base.shape[d] // inner, inner)).movedim(d, 0)
            first = (torch.zeros_like(seq[:1]) if rep.prev is None
                     else rep.prev.detach().to(seq.dtype).unsqueeze(0))
            before = (rep.decay * torch.cat([first, seq[:-1]])).movedim(0, d).flatten(d, d + 1)
            before = before.view_as(base) if d == 0 else before
        for func, args, kwargs in rep.chain:
            before = func(before, *args, **kwargs)
        return self.low(x - before)

    def accumulated(self, x: Tensor, site: Site, slot: int = 0, lam: Optional[float] = None,
                    since: Optional[int] = None) -> tuple[Tensor, float]:
        """(A, λ): one operand of a linear map as an accumulation (per-step values are
        accumulated here, with the decay ``lam`` or the model's first neuron's; in step mode
        'm' along the operand's time layout, which the route has checked). ``since``: the step
        the accumulation must start at (the operands of one map share it; a neuron reset in the
        middle of a sequence restarts the accumulations of its spikes)."""
        rep = self.reps.get(x)
        fresh = rep is not None and rep.call == self.call
        if lam is None:
            lam = self.receiver_decay(site)  # accumulate with the receiver's: OTTT's trace
        if fresh and rep.kind in (ACC, SPIKE) and (lam is None or rep.decay == lam) and (
                since is None or rep.since == since):
            acc = x if rep.kind == ACC or rep.acc is None else rep.acc
            acc = self.high(acc)
            if self.t == 0 and self.step_mode == "s":
                site.in_acc[slot] = acc.detach()  # = the value at t = 0, whatever the decay
            site.call_since = max(site.call_since, rep.since)
            return acc, rep.decay
        v = x if rep is None or rep.kind == SPIKE else self.step_value(x, rep)
        if rep is not None and rep.call != self.call:
            v = v.detach()  # state from an earlier step (recurrence): history detached
        if lam is None:
            lam = rep.decay if rep is not None and rep.sent else self.decay
        if not v.is_floating_point():
            return v, lam  # the plain model's error for integer input
        v = self.high(v)
        prev = site.in_acc.get(slot)
        if since is not None and site.in_since.get(slot) != since:
            prev = None  # (re)start at ``since``
        if prev is None:
            site.in_since[slot] = self.t if since is None else since
        site.call_since = max(site.call_since, site.in_since.get(slot, 0))
        if self.step_mode == "s":
            acc = core.accumulate_step(v, prev, lam)
            site.in_acc[slot] = acc.detach()
        else:
            d, inner = rep.time
            seq = _accumulate_detached(v.unflatten(d, (self.steps, inner)).movedim(d, 0), lam,
                                       prev)
            site.in_acc[slot] = seq[-1].detach()
            acc = seq.movedim(0, d).flatten(d, d + 1)
            acc = acc.view_as(v) if d == 0 else acc
        return acc, lam

    def model_dtype(self, inputs: list) -> torch.dtype:
        """The model's dtype: its first float parameter's, else its input's."""
        return next((p.dtype for p in self.root.parameters() if p.is_floating_point()),
                    next((x.dtype for x in inputs if x.is_floating_point()),
                         torch.get_default_dtype()))

    def high(self, x):
        """``x`` (a float tensor) in the accumulation dtype; anything else, or without
        ``accumulate``, unchanged (the cast is differentiable: gradients reach ``x``)."""
        if self.accumulate is None or not torch.is_tensor(x) or not x.is_floating_point():
            return x
        return x.to(self.accumulate)

    def low(self, x: Tensor) -> Tensor:
        """A per-step value made from accumulations, back in the model's dtype."""
        if self.accumulate is None or not x.is_floating_point():
            return x
        return x.to(self.dtype)

    def _consts(self, vals):
        """The constants of a linear map (a list or dict) in the accumulation dtype."""
        if self.accumulate is None:
            return vals
        if isinstance(vals, dict):
            return {k: self.high(v) for k, v in vals.items()}
        return [self.high(v) for v in vals]


def _split_time(const: Tensor, ndim: int, d: int) -> Tensor:
    """A constant broadcastable against an ``ndim``-dim tensor (size 1 along dim ``d``, its
    time), reshaped to broadcast against that tensor unflattened at ``d`` into [T, inner]."""
    lead = ndim - const.dim()
    if d < lead:
        return const
    return const.reshape((1,) * lead + tuple(const.shape)).unsqueeze(d)


def _accumulate_detached(v: Tensor, lam: float, prev: Optional[Tensor]) -> Tensor:
    """A[t] = λ A[t−1] + v[t] over [T, ...], with A[t−1] a constant (as step mode 's' has it):
    the value of the accumulation, the gradient of v[t] alone."""
    return core.accumulate(v.detach(), lam, prev) + (v - v.detach())
