"""Linear maps between neurons, once per step on accumulations.

A linear map A commutes with the accumulation: A(Σ_k λ^k v[t−k]) = Σ_k λ^k A v[t−k], so it runs
once on the accumulated input; an additive constant β (a bias, BatchNorm's shift) is scaled by
c[t] = Σ_k λ^k. linear, conv, average pooling, eval-mode batch_norm, add/sub of branches and
constants, mul/div by constants, matmul with a constant, sum/mean over non-time dims, cat/stack
of one decay, and the modules declared with ``register_linear``. A map whose input is a
per-step value and whose constants need no gradient runs on that value itself. See
docs/theory.md ("When SAF is exact: the data flow").

A mixin of :class:`saf_plugin.runtime.Runtime`; its routes are registered in
:data:`saf_plugin.runtime.routes.ROUTES`.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.stateless import _reparametrize_module  # (what torch.func.functional_call
                                                            # uses, without the module's hooks)

from .. import timeaxis
from ..dataflow import _CONV, _POOL, ACC, SPIKE, STEP, Rep, Site, tensors_in
from ..modes import Mode
from ..registry import module_step_mode
from ..timeaxis import TOUCH
from .routes import PER_STEP, route


class LinearRoutes:
    """The linear-map routes."""

    @route("linear")
    def _linear(self, func, name, args, kwargs):
        """``F.linear``: its bias along the last dim."""
        return self._linear_map(func, name, args, kwargs, "last")

    @route(*sorted(_CONV))
    def _conv(self, func, name, args, kwargs):
        """Convolutions: their bias along the channel dim."""
        return self._linear_map(func, name, args, kwargs, "channel")

    @route(*sorted(_POOL))
    def _pool(self, func, name, args, kwargs):
        """Average pooling: no constant."""
        return self._linear_map(func, name, args, kwargs, None)

    def _linear_map(self, func, name, args, kwargs, bias_at):
        """linear, conv and average pooling: once on the accumulated input; the bias (at
        ``bias_at``: "last", "channel" or None) scaled by c[t]."""
        args, kwargs = list(args), dict(kwargs)
        consts = tensors_in(args[1:], tensors_in(kwargs) if kwargs else None)
        if any(a in self.reps for a in consts):
            return PER_STEP  # e.g. a weight computed from the input: per step
        x = args[0]
        time = self._map_time(name, x)
        if time == TOUCH:
            return PER_STEP  # it works along time (step mode 'm'): per step
        if self._plain(x, consts):
            return self._per_step(func, name, args, kwargs, linear=True)
        site = self.site(name, tuple(args))
        self._note(site.where, name, "on accumulations")
        self.watch_weights(site, consts)
        a, lam = self.accumulated(x, site)
        args, kwargs = [a, *self._consts(args[1:])], self._consts(kwargs)
        bias = None
        if bias_at is not None:
            bias = kwargs.get("bias", args[2] if len(args) > 2 else None)
        out = self._split_call(func, args, kwargs, a, time)
        if bias is not None and (self.step_mode != "s" or self.t != site.call_since):
            # (in step mode 's' at the accumulation's first step c[t] = 1: nothing to add)
            shape = bias.shape if bias_at == "last" else (bias.shape[0], *([1] * _CONV[name]))
            b = bias.view(shape)
            out = self._shift(out, b, lam, time, fresh=True,  # the call added b once
                              since=site.call_since)
        return self._acc_out(out, lam, site, inputs=(x,), time=time)

    def _kept_time(self, name: str, x: Tensor, time):
        """Step mode 'm': the layout of ``name``'s result when the operation works along other
        dims than time (so it commutes with accumulating along time), else None."""
        if time is None:
            return None
        d, ndim = time[0], x.dim()
        if name == "linear":
            return None if d == ndim - 1 else time
        if name in _CONV:
            return time if d == 0 and ndim == _CONV[name] + 2 else None
        if name in _POOL or name.startswith("max_pool"):
            return time if d < ndim - int(name[-2]) else None
        if name == "batch_norm":
            return None if d == 1 else time
        if name in ("layer_norm", "group_norm", "instance_norm"):
            return time if d == 0 else None
        return None

    def _map_time(self, name: str, x: Tensor):
        """The output layout of a linear map on ``x`` (None in step mode 's'); :data:`TOUCH`
        where it cannot run on accumulations along time: ``x`` has no time axis the engine can
        name, or the map works along it."""
        if self.step_mode == "s":
            return None
        time = self._kept_time(name, x, self.reps[x].time)
        return TOUCH if time is None else time

    def _plain(self, x: Tensor, consts) -> bool:
        """A map on a per-step value whose constants need no trace (nothing requires a
        gradient) runs on the per-step value itself: the same values and gradients, no state."""
        return self.reps[x].kind == STEP and not any(
            torch.is_tensor(c) and c.requires_grad for c in consts)

    def _split_call(self, func, args, kwargs, a: Tensor, time=None):
        """SAF-F in step mode 'm': the rows of steps 0..T−2 run without a graph
        (``modes.keeps_graph``); only the last step's is kept (time along dim 0)."""
        if not (self.mode == Mode.F and self.step_mode == "m" and self.steps > 1
                and torch.is_grad_enabled() and time is not None and time[0] == 0):
            return func(*args, **kwargs)
        k = a.shape[0] * (self.steps - 1) // self.steps
        head, tail = list(args), list(args)
        head[0], tail[0] = a[:k], a[k:].clone()
        with torch.no_grad():
            h = func(*head, **kwargs)
        return torch.cat([h, func(*tail, **kwargs)])

    def _acc_out(self, out: Tensor, lam: float, site: Site, raw: bool = False,
                 inputs: tuple = (), time=None) -> Tensor:
        prev = site.out_prev
        reps = [r for r in (self.reps.get(a) for a in inputs if torch.is_tensor(a))
                if r is not None]  # (the inputs' tags, read once)
        up = tuple(u for r in reps if r.kind == ACC for u in r.sites)
        since = site.call_since
        if since != site.since:  # its input's accumulation started afresh (a neuron reset)
            prev, site.since = None, since
        site.time = time
        early = all(r.early for r in reps)
        if self.learning or site.needs_prev:
            if self.step_mode == "s":
                site.out_prev = out.detach()
            else:
                d, inner = time
                site.out_prev = out.detach().unflatten(d, (self.steps, inner)).select(d, -1)
        self.reps[out] = Rep(ACC, self.call, self.t, decay=lam, base=None, prev=prev,
                             time=time, site=site, raw=raw, sites=(site, *up), early=early,
                             since=since)
        return out

    @route("batch_norm")
    def _batch_norm(self, func, name, args, kwargs):
        """Eval-mode batch_norm (running statistics): an affine map; training mode per step."""
        names = ("input", "running_mean", "running_var", "weight", "bias", "training",
                 "momentum", "eps")
        b = dict(zip(names, args))
        b.update(kwargs)
        if b.get("training", False) or b.get("running_mean") is None:
            return PER_STEP  # batch statistics: per step
        if any(torch.is_tensor(v) and v in self.reps for k, v in b.items() if k != "input"):
            return PER_STEP
        x = b["input"]
        time = self._map_time(name, x)
        if time == TOUCH:
            return PER_STEP
        if self._plain(x, [b.get("weight"), b.get("bias")]):
            return self._per_step(func, name, args, kwargs, linear=True)
        site = self.site(name, (x, b.get("weight"), b["running_mean"]))
        self._note(site.where, "batch_norm (eval)", "on accumulations")
        self.watch_weights(site, [b.get("weight"), b.get("bias")])
        a, lam = self.accumulated(x, site)
        vals = [a, *self._consts([b.get(k) for k in names[1:]])]
        b = dict(zip(names, vals))
        out = self._split_call(func, vals, {}, a, time)
        inv = torch.rsqrt(b["running_var"] + b.get("eps", 1e-5))
        shift = -b["running_mean"] * inv
        if b.get("weight") is not None:
            shift = shift * b["weight"]
        if b.get("bias") is not None:
            shift = shift + b["bias"]
        out = self._shift(out, shift.view(-1, *([1] * (a.dim() - 2))), lam, time,
                          since=site.call_since)
        return self._acc_out(out, lam, site, inputs=(x,), time=time)

    def _decay_of(self, a) -> Optional[float]:
        if torch.is_tensor(a) and a in self.reps:
            rep = self.reps[a]
            if rep.call == self.call and rep.kind in (ACC, SPIKE):
                return rep.decay
        return None

    @route("add", "sub", "radd", "rsub")
    def _add(self, func, name, args, kwargs):
        """A sum of accumulations (of one decay), or of an accumulation and a constant (scaled
        by c[t])."""
        if "alpha" in kwargs or len(args) != 2:
            return PER_STEP
        tagged = [torch.is_tensor(a) and a in self.reps for a in args]
        reps = [self.reps[a] if t else None for a, t in zip(args, tagged)]
        if all(r is None or r.kind == STEP for r in reps):
            return self._per_step(func, name, args, kwargs, linear=True)  # a sum of values
        decays = {self._decay_of(a) for a, t in zip(args, tagged) if t} - {None}
        ndim = max(a.dim() if torch.is_tensor(a) else 0 for a in args)
        time = None
        if self.step_mode == "m":
            time = timeaxis.broadcast([(r.time, a.dim()) for a, r in zip(args, reps)
                                       if r is not None], ndim)
            if time is None:
                return PER_STEP  # operands with time in other places: per step
            for a, r in zip(args, reps):
                if r is None and torch.is_tensor(a) and timeaxis.constant_varies_along_time(
                        time, ndim, a.shape):
                    return PER_STEP  # a constant that changes along time: per step
        site = self.site(name, args)
        self._note(site.where, name, "on accumulations")
        lam = self.receiver_decay(site)
        if lam is None:
            lam = decays.pop() if decays else None
        since = self._since_of(args)
        vals = self._consts(list(args))
        for i, a in enumerate(args):
            if tagged[i]:
                vals[i], lam = self.accumulated(a, site, slot=i, lam=lam, since=since)
        raw = all(self.reps[a].raw for a, t in zip(args, tagged) if t)
        out = func(*vals, **kwargs)
        if not all(tagged):
            i = tagged.index(False)
            c = args[i]
            neg = (name == "sub" and i == 1) or (name == "rsub" and i == 0)
            if torch.is_tensor(c) or c != 0:
                out = self._shift(out, -c if neg else c, lam, time, since=site.call_since)
        return self._acc_out(out, lam, site, raw, inputs=args, time=time)

    @route("mul", "rmul", "div", "truediv", "neg", "matmul", "rmatmul", "mm", "bmm", "sum", "mean",
           "cat", "concat", "concatenate", "stack", "pos")
    def _linear_generic(self, func, name, args, kwargs):
        """mul/div by constants, matmul with a constant, sums and means over non-time dims,
        cat/stack of accumulations of one decay."""
        multi = self.step_mode == "m"
        if name in ("cat", "concat", "concatenate", "stack"):
            seq = args[0]
            dim = int(kwargs.get("dim", args[1] if len(args) > 1 else 0))
            if self.mode == Mode.F and self.step_mode == "s" and all(
                    torch.is_tensor(a) and a in self.reps for a in seq) and any(
                    self.reps[a].call != self.call for a in seq):
                return self._collect(func, seq, args[1:], kwargs)
            decays = [self._decay_of(a) for a in seq]
            if None in decays or len(set(decays)) != 1:
                return PER_STEP
            time = None
            if multi:
                times = {self.reps[a].time for a in seq}
                time = times.pop() if len(times) == 1 else None
                ndim = seq[0].dim() + (name == "stack")
                dim = dim % ndim
                if time is None or (dim == time[0] and name != "stack"):
                    return PER_STEP  # along time, or time in other places: per step
                if name == "stack" and dim <= time[0]:
                    time = (time[0] + 1, time[1])
            site = self.site(name, tuple(seq))
            self._note(site.where, name, "on accumulations")
            since = self._since_of(seq)
            vals = [self.accumulated(a, site, i, since=since)[0] for i, a in enumerate(seq)]
            out = func(vals, *args[1:], **kwargs)
            return self._acc_out(out, decays[0], site, inputs=tuple(seq), time=time)
        tagged = [i for i, a in enumerate(args) if torch.is_tensor(a) and a in self.reps]
        if len(tagged) != 1 or any(torch.is_tensor(v) and v in self.reps
                                   for v in kwargs.values()):
            return PER_STEP  # a product of two input-dependent tensors: per step
        i = tagged[0]
        x = args[i]
        rep = self.reps[x]
        if name in ("sum", "mean"):
            if rep.kind == SPIKE:
                return PER_STEP  # spike counts and rates: on the real spikes
            if kwargs.get("dtype") is not None:
                return PER_STEP
        if name in ("div", "truediv") and i != 0:
            return PER_STEP
        consts = [a for j, a in enumerate(args) if j != i] + list(kwargs.values())
        time = self._generic_time(name, args, kwargs, i) if multi else None
        if time == TOUCH:
            return PER_STEP  # along time: per step
        if self._plain(x, consts):
            return self._per_step(func, name, args, kwargs, linear=True)
        site = self.site(name, args if i == 0 else (args[i], *args[:i], *args[i + 1:]))
        self._note(site.where, name, "on accumulations")
        self.watch_weights(site, consts)
        vals = self._consts(list(args))
        vals[i], lam = self.accumulated(args[i], site)
        out = func(*vals, **self._consts(kwargs))
        return self._acc_out(out, lam, site, rep.raw, inputs=(args[i],), time=time)

    def _since_of(self, operands) -> Optional[int]:
        """The step the accumulations of several operands of one map must start at: the
        latest start among those that arrive accumulated (None when they all start together)."""
        starts = {self.reps[a].since for a in operands if torch.is_tensor(a) and a in self.reps
                  and self.reps[a].kind != STEP and self.reps[a].call == self.call}
        return max(starts) if len(starts) > 1 or (starts and max(starts) > 0) else None

    def _generic_time(self, name, args, kwargs, i):
        """Step mode 'm': the output layout of mul/div/neg/matmul/sum/mean of tagged operand
        ``args[i]`` with constants, or :data:`TOUCH` where the map works along time (a
        reduction or contraction over it, a factor that changes along it)."""
        x = args[i]
        time, ndim = self.reps[x].time, x.dim()
        if time is None:
            return TOUCH
        if name in ("sum", "mean"):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            keep = bool(kwargs.get("keepdim", args[2] if len(args) > 2 else False))
            return timeaxis.reduced(time, dim, ndim, keep)
        if name in ("neg", "pos"):
            return time
        other = args[1 - i] if len(args) == 2 else None
        shape = tuple(other.shape) if torch.is_tensor(other) else ()
        if name in ("mul", "rmul", "div", "truediv"):
            if timeaxis.constant_varies_along_time(time, ndim, shape):
                return TOUCH
            return timeaxis.shifted(time, max(ndim, len(shape)) - ndim)
        # matmul family: x @ W (x on the left) contracts x's last dim, W @ x its second to last
        left = (i == 0) != (name == "rmatmul")
        if ndim < 2 or len(shape) < 2:
            return TOUCH  # a vector operand: left to the per-step route
        d = time[0]
        if d == (ndim - 1 if left else ndim - 2):
            return TOUCH
        out_ndim = max(ndim, len(shape))
        if d >= ndim - 2:  # the kept matrix dim
            return out_ndim - (ndim - d), time[1]
        if timeaxis.constant_varies_along_time(time, ndim - 2, shape[:-2]):
            return TOUCH  # a batched constant that changes along time
        return d + out_ndim - ndim, time[1]

    def _collect(self, func, seq, rest, kwargs):
        """SAF-F, a forward that loops over time and stacks its per-step outputs (snnTorch
        tutorial 5): each is turned into its output form (the spike representation A[t]/c[t]),
        and the result may only leave the model."""
        out = func([self._output_one(a) for a in seq], *rest, **kwargs)
        self.reps[out] = Rep(STEP, self.call, self.t, fout=True)
        return out

    def user_linear(self, module: nn.Module, forward: Callable, args: tuple, kwargs: dict):
        """A module declared with register_linear: its forward, once, on the accumulated input
        (its constant, if it declared one, scaled by c[t])."""
        x = args[0]
        if not self.active or self.paused or not (torch.is_tensor(x) and x in self.reps):
            return forward(module, *args, **kwargs)
        name = type(module)._saf_base.__name__
        time = self.reps[x].time
        if self.step_mode == "m" and time is None:
            return self.user_per_step(module, forward, args, kwargs)  # no time axis here
        site = self.site(name, (x, *args[1:]))
        self._note(site.where, name, "on accumulations")
        self.watch_weights(site, list(module.parameters()))
        a, lam = self.accumulated(x, site)
        self.paused += 1
        try:
            if self.accumulate is None:
                out = forward(module, a, *args[1:], **kwargs)
            else:  # its parameters and buffers cast for this call (the module keeps its own)
                state = {k: self.high(v) for k, v in [*module.named_parameters(),
                                                      *module.named_buffers()]}
                with _reparametrize_module(module, state):
                    out = forward(module, a, *args[1:], **kwargs)
        finally:
            self.paused -= 1
        spec = module._saf_spec
        if spec.shift is not None:
            unfolded = self.step_mode == "m" and module_step_mode(module) == "m"
            shift = spec.shift(module, out, out.dim() - 1 - unfolded)
            if shift is not None:
                out = self._shift(out, shift, lam, time, since=site.call_since)
        return self._acc_out(out, lam, site, inputs=(x,), time=time)
