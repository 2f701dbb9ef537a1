"""The per-step route: an operation SAF cannot run on accumulations runs on the per-step values
of its operands (accumulations de-accumulated), its outputs tagged as per-step values (exact for
any operation; element-wise work per step). Also what writes into tensors (in-place operations,
``x[idx] = v``, ``copy_``), what the forward makes anew at every step (random draws, values from
Python numbers), values leaving the tensor world (``item``, printing), and the modules declared
with ``register_per_step``.

In step mode 'm' the time layout of a per-step result follows the operation (element-wise:
the operands'; reductions and operations along a dim: :mod:`saf_plugin.timeaxis`).

A mixin of :class:`saf_plugin.runtime.Runtime`; its routes are registered in
:data:`saf_plugin.runtime.routes.ROUTES`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from .. import timeaxis
from ..dataflow import _CONV, _POOL, ACC, STEP, Rep, map_tensors, tensors_in, user_frame
from ..modes import Mode
from ..timeaxis import TOUCH
from .routes import route


class StepRoutes:
    """Operations on per-step values, writes, and tensors made at every step."""

    @route("escape")
    def _escape(self, func, name, args, kwargs):
        """A value leaving the tensor world (``item``, ``float``, printing, comparisons of whole
        tensors): computed from the per-step value."""
        return self._per_step(func, name, args, kwargs, note=False)

    @route("setitem", "copy_")
    def _write_route(self, func, name, args, kwargs):
        """``x[idx] = v``, ``x.copy_(v)``: see :meth:`_write`."""
        return self._write(func, name, args, kwargs)

    def _per_step(self, func, name, args, kwargs, note: bool = True, linear: bool = False):
        """``func`` on the per-step values of its arguments (accumulations de-accumulated);
        outputs tagged ``STEP``. ``linear``: a linear map run on per-step values (its inputs
        are per-step values and its constants need no trace), which SAF-F takes as it is."""
        fbad = None
        tagged = [a for a in tensors_in(args, tensors_in(kwargs) if kwargs else None)
                  if a in self.reps]
        reps = [self.reps[a] for a in tagged]
        raw = all(r.raw for r in reps)
        if self.mode == Mode.F and note and not raw and not linear:
            fbad = f"{name} at {user_frame()}"
        if self.record is not None and note:
            self._note(user_frame(), name, "on per-step values" if linear else "per step")

        def value(a):
            if torch.is_tensor(a):
                rep = self.reps.get(a)
                if rep is not None:
                    return self.step_value(a, rep)
            return a

        out = func(*map_tensors(value, args), **map_tensors(value, kwargs))
        if fbad is None:
            fbad = next((r.fbad for r in reps if r.fbad), None)
        early = all(r.early for r in reps)
        for o in tensors_in(out):
            time = (self._step_time(name, args, kwargs, tagged, reps, o)
                    if self.step_mode == "m" else None)
            self.reps[o] = Rep(STEP, self.call, self.t, raw=raw, fbad=fbad, time=time,
                               early=early)
        return out

    def _step_time(self, name, args, kwargs, tagged, reps, out: Tensor):
        """Step mode 'm': the time layout of the output of an operation run on the per-step
        sequence (:mod:`saf_plugin.timeaxis`): element-wise operations keep the operands'
        layout, reductions and operations along a dim drop or keep it, anything else (an
        operation across time, one the engine does not know) leaves no time axis it can name."""
        if not tagged:
            return None
        layouts = [(r.time, a.dim()) for a, r in zip(tagged, reps)]
        x = args[0] if args and torch.is_tensor(args[0]) and args[0] in self.reps else tagged[0]
        time, ndim = self.reps[x].time, x.dim()
        dim = kwargs.get("dim", args[1] if len(args) > 1 and not torch.is_tensor(args[1])
                         else None)
        if name in _POINTWISE or (name in ("max", "min") and len(args) > 1
                                  and torch.is_tensor(args[1])):
            return timeaxis.broadcast(layouts, out.dim())
        if name in _REDUCE:
            keep = bool(kwargs.get("keepdim", args[2] if len(args) > 2 else False))
            r = timeaxis.reduced(time, dim, ndim, keep)
            return None if r == TOUCH else r
        if name in _ALONG:
            r = timeaxis.along(time, dim if dim is not None else -1, ndim)
            return None if r == TOUCH or out.dim() != ndim else r
        if name in ("linear", "batch_norm", "layer_norm", "group_norm", "instance_norm") or (
                name in _CONV or name in _POOL or name in ("max_pool1d", "max_pool2d",
                                                            "max_pool3d")):
            return self._kept_time(name, x, time)
        return None

    def _inplace(self, func, name, args, kwargs):
        """x.op_(...) on tagged values: the out-of-place op, copied back into x."""
        x = args[0]
        out_of_place = getattr(torch.Tensor, name[:-1], None) if name != "copy_" else None
        if out_of_place is None or not torch.is_tensor(x):
            return self._per_step(func, name, args, kwargs)
        res = self.dispatch(out_of_place, args, kwargs)
        rep = self.reps.get(res)
        self._unalias(x)
        self.paused += 1
        try:
            x.copy_(res)
        finally:
            self.paused -= 1
        if rep is not None:
            self.reps[x] = Rep(**rep.__dict__)
        return x

    def _keep_statistics(self, args, kwargs) -> None:
        """batch_norm in training mode updates its running statistics in place: keep them, so
        that a refused call can put them back."""
        for i, key in ((1, "running_mean"), (2, "running_var")):
            buf = kwargs.get(key, args[i] if len(args) > i else None)
            if torch.is_tensor(buf):
                self.undo.append((buf, buf.detach().clone()))

    def _made(self, out, like: list):
        """Tag what the forward makes anew at every step (a random draw, a value from a
        Python number, a row picked by a step counter) as a per-step value: never a constant
        of a linear map. In step mode 'm' a tensor made like a tagged one takes its layout."""
        src = next((self.reps[a] for a in like if a in self.reps), None)
        for o in tree_flatten(out)[0]:
            if torch.is_tensor(o) and o.is_floating_point():
                time = src.time if (src is not None and self.step_mode == "m"
                                    and o.shape == like[0].shape) else None
                self.reps[o] = Rep(STEP, self.call, self.t, time=time)
        return out

    def _write(self, func, name, args, kwargs):
        """``x[idx] = v`` / ``x.copy_(v)``: the plain model writes per-step values into x, so x
        holds per-step values afterwards (an accumulation is first turned into its per-step
        values in place, and every tagged view of it with it)."""
        x = args[0]
        rep = self.reps.get(x)
        tagged = [a for a in tree_flatten((args[1:], kwargs))[0]
                  if torch.is_tensor(a) and a in self.reps]
        raw = all(self.reps[a].raw for a in tagged) and (rep is None or rep.raw)
        if rep is not None:
            self._own(x, rep)
        values = tree_map(lambda a: self.step_value(a, self.reps[a]) if (
            torch.is_tensor(a) and a in self.reps) else a, (args[1:], kwargs))
        self.paused += 1
        try:
            out = func(x, *values[0], **values[1])
        finally:
            self.paused -= 1
        fbad = next((self.reps[a].fbad for a in tagged if self.reps[a].fbad),
                    None if rep is None else rep.fbad)
        self.reps[x] = Rep(STEP, self.call, self.t, raw=raw, fbad=fbad,
                           time=None if rep is None else rep.time,
                           early=all(self.reps[a].early for a in tagged) and (
                               rep is None or rep.early))
        return x if name == "copy_" else out

    def _own(self, x: Tensor, rep: Rep) -> None:
        """Before x is written in place: SAF's state sharing its storage gets a copy, an
        accumulation's storage gets its per-step values, and every tagged tensor on that
        storage (views) becomes a per-step value."""
        self._unalias(x)
        if rep.kind == ACC:
            v = self.step_value(x, rep)
            self.paused += 1
            try:
                x.copy_(v)
            finally:
                self.paused -= 1
        ptr = x.untyped_storage().data_ptr()
        for t, r in list(self.reps.items()):
            if r.kind != STEP and t.untyped_storage().data_ptr() == ptr:
                self.reps[t] = Rep(STEP, r.call, r.seq, time=r.time, raw=r.raw, fbad=r.fbad,
                                   early=r.early)

    def _unalias(self, x: Tensor) -> None:
        """Before x is overwritten in place: state that shares its storage gets a copy."""
        ptr = x.untyped_storage().data_ptr()

        def own(t):
            return t.clone() if torch.is_tensor(t) and t.untyped_storage().data_ptr() == ptr else t

        for s in self.sites:
            s.in_acc = {k: own(v) for k, v in s.in_acc.items()}
            s.out_prev = own(s.out_prev)
        for st in self.states.values():
            for k, v in vars(st).items():
                setattr(st, k, own(v))

    def user_per_step(self, module: nn.Module, forward: Callable, args: tuple, kwargs: dict):
        """A module declared with register_per_step: its forward, once per step, on the
        per-step values of its arguments (SAF does not look inside)."""
        flat = tensors_in(args, tensors_in(kwargs))
        if not self.active or self.paused or not any(a in self.reps for a in flat):
            return forward(module, *args, **kwargs)

        self.paused += 1  # (called from the module, not from the mode: pause it ourselves)
        try:
            return self._per_step(lambda *a, **k: forward(module, *a, **k),
                                  type(module)._saf_base.__name__, args, kwargs)
        finally:
            self.paused -= 1


# element-wise operations (per-step route): the result keeps the operands' time layout
_POINTWISE = {
    "add", "sub", "rsub", "radd", "mul", "rmul", "div", "truediv", "rtruediv", "floordiv",
    "rfloordiv", "remainder", "pow", "rpow", "neg", "pos", "abs", "exp", "exp2", "expm1", "log",
    "log1p", "log2", "log10", "sqrt", "rsqrt", "square", "reciprocal", "sigmoid", "tanh", "relu",
    "relu6", "gelu", "silu", "mish", "elu", "selu", "celu", "leaky_relu", "hardtanh",
    "hardsigmoid", "hardswish", "softplus", "softsign", "logsigmoid", "tanhshrink", "threshold",
    "clamp", "clip", "clamp_min", "clamp_max", "where", "maximum", "minimum", "fmax", "fmin",
    "sign", "sgn", "heaviside", "ge", "gt", "le", "lt", "eq", "ne", "greater", "greater_equal",
    "less", "less_equal", "logical_and", "logical_or", "logical_not", "logical_xor", "and",
    "or", "xor", "invert", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "floor",
    "ceil", "round", "trunc", "frac", "sin", "cos", "tan", "asin", "acos", "atan", "atan2",
    "sinh", "cosh", "erf", "erfc", "lerp", "addcmul", "addcdiv", "masked_fill", "isnan",
    "isinf", "isfinite", "nan_to_num", "copysign", "fmod", "hypot", "logit", "xlogy", "sinc",
    "type_as", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "bernoulli", "prelu", "rrelu", "glu_", "float_power", "mvlgamma",
    "lgamma", "digamma", "erfinv", "i0", "sigmoid_", "positive", "conj", "real", "imag", "angle",
}
# reductions over ``dim`` (time reduced: no time axis left)
_REDUCE = {"sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "prod", "std",
           "var", "std_mean", "var_mean", "norm", "logsumexp", "all", "any", "median",
           "nanmedian", "mode", "count_nonzero", "nansum", "nanmean", "aminmax"}
# operations along one dim that keep the shape (along time: they mix steps)
_ALONG = {"softmax", "log_softmax", "softmin", "cumsum", "cumprod", "cummax", "cummin",
          "logcumsumexp", "sort", "argsort", "flip", "roll", "normalize"}
