"""How each operation between neurons runs under SAF: on accumulations, as a shape operation, or
per step (the methods :class:`saf_plugin.runtime.Runtime` dispatches every operation to).

- linear maps (linear, conv, average pooling, eval-mode BatchNorm, sums, scaling, matmul with a
  constant, cat/stack): once on accumulations, an additive constant β scaled by c[t];
- shape operations: on the value (and a spike's accumulation), keeping the representation;
- everything else: on the per-step values, output tagged ``STEP`` (exact, element-wise cost).

Per-operation state lives in *sites*: the k-th linear map of a step is site k.
See docs/theory.md ("When SAF is exact: the data flow").
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from . import timeaxis
from .dataflow import (_CONST_LIKE, _CONV, _DROPOUT, _MADE, _MADE_LIKE, _NO_TENSOR, _PICK, _POOL,
                       _RANDOM_INPLACE, _SHAPE, ACC, SPIKE, STEP, Refusal, Rep, Site, _name,
                       map_tensors, module_path, tensors_in, user_frame)
from .timeaxis import TOUCH
from .errors import Finding, SAFStateError
from .modes import Mode


class Routes:
    """The operation routes of the runtime (a mixin of :class:`saf_plugin.runtime.Runtime`;
    the linear maps are :class:`saf_plugin.linear_routes.LinearRoutes`)."""

    # ----------------------------------------------------------------- dispatch

    def site(self, name: str, args: tuple) -> Site:
        """The state of this linear map; a time loop inside forward is found here."""
        weight = next((a for a in args[1:] if isinstance(a, nn.Parameter)), None)
        numbers = tuple(a for a in args[1:] if isinstance(a, (int, float)))  # a factor read per
        key = (name, None if weight is None else id(weight), numbers)  # step must stay the same
        if self.step_mode == "s":
            data = self.reps.get(args[0]) if torch.is_tensor(args[0]) else None
            if self.loop_key is None:
                self.loop_key, self.loop_op = key, self.op
            elif key == self.loop_key and data is not None and data.raw and self.fired:
                self.next_step()  # the forward's own loop over time started its next step
                # (the step's first linear map again on the input, after neurons ran: a map
                # called twice on the input before any neuron, fc(x) + fc(x), is one step)
        k = self.op
        self.op += 1
        if k < len(self.sites):
            s = self.sites[k]
            s.call_since = 0
            if s.key != key and self.t == 0:  # another structure (e.g. eval mode): relearn
                del self.sites[k:]
            elif s.key[0] == name and s.key != key:
                raise Refusal(Finding(
                    module_path(), name, "unsupported",
                    f"the {name} at {user_frame()} uses other constants (weights, or a number "
                    "read at every step) than in the step before: a linear map that changes "
                    "from step to step (one BatchNorm per time step as snntorch.BatchNormTT, a "
                    "factor from a schedule indexed by the step) is not one linear map on "
                    "accumulations",
                    "use the same map at every step (a per-step factor as a tensor, "
                    "torch.tensor(...), runs per step), or train with BPTT"))
            elif s.key[0] != name:
                raise self._lost(f"linear map {k} of this step is {name} at {user_frame()}, "
                                 f"but it was {s.key[0]} at {s.where} in an earlier step")
            if k < len(self.sites):
                return s
        s = Site(key, user_frame())
        s.needs_prev = not self.learning  # learnt in the first call; later sites keep prev
        if self.lesson_now is not None:  # step mode 'm': the neuron it feeds, from the probe
            s.recv_from = self.lesson_now.receivers.get(k)
        self.sites.append(s)
        return s

    def dispatch(self, func, args: tuple, kwargs: dict):
        name = _name(func)
        if name in _NO_TENSOR:
            return func(*args, **kwargs)
        flat = tensors_in(args, tensors_in(kwargs) if kwargs else None)
        tagged = any(a in self.reps for a in flat)
        if name in _MADE_LIKE or (not tagged and (name in _MADE or name in _RANDOM_INPLACE)):
            return self._made(func(*args, **kwargs), flat)
        if name in _RANDOM_INPLACE:  # a tagged tensor overwritten with random draws
            self._own(args[0], self.reps[args[0]])
            return self._made(func(*args, **kwargs), flat)
        if (self.undo is not None and name.endswith("_") and flat and self.buffers is not None
                and flat[0] in self.buffers):
            self.undo.append((flat[0], flat[0].detach().clone()))  # (BatchNorm's counter)
        if name == "batch_norm" and self.undo is not None:
            self._keep_statistics(args, kwargs)
        if not tagged or name in _CONST_LIKE:
            out = func(*args, **kwargs)
            if name in _PICK and _picks_by_number(args, kwargs):
                return self._made(out, ())  # a row of a table picked by a step counter
            return out
        self.no_checkpoint()
        bad = next((r.fbad for r in map(self.reps.get, flat) if r is not None and r.fbad), None)
        if bad is not None:
            raise self._f_refusal(bad)
        if any(r is not None and r.fout for r in map(self.reps.get, flat)):
            raise Refusal(Finding(
                module_path(), name, "unsupported",
                f"{name} at {user_frame()} computes with SAF-F outputs collected over time steps "
                "(spike representations, not spikes); under SAF-F they can only be returned",
                "return the collected outputs from forward, or train with SAF-E"))
        if name == "escape":
            return self._per_step(func, name, args, kwargs, note=False)
        if name in ("setitem", "copy_"):
            return self._write(func, name, args, kwargs)
        if name.endswith("_") and name not in ("requires_grad_",):
            return self._inplace(func, name, args, kwargs)
        route = self._route(name, args, kwargs)
        if route == "shape":
            return self._shape(func, name, args, kwargs)
        if route is not None:
            out = route(func, name, args, kwargs)
            if out is not NotImplemented:
                return out
        return self._per_step(func, name, args, kwargs)

    def _note(self, where: str, name: str, route: str) -> None:
        if self.record is not None:
            self.record.append((where, name, route))

    # ----------------------------------------------------------------- routes

    def _route(self, name: str, args, kwargs):
        if name in _SHAPE:
            x = args[0] if args else None
            if not (torch.is_tensor(x) and x in self.reps):
                return None
            if self._makes_time(name, args, kwargs):
                return self._new_time
            if self.step_mode == "m" and self._touches_time(name, args, kwargs):
                return None  # it picks, slices or repeats steps: on the per-step sequence
            return "shape"
        if name in _DROPOUT:
            training = kwargs.get("training", args[2] if len(args) > 2 else True)
            p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            return "shape" if (not training or float(p) == 0) and args[0] in self.reps else None
        if name == "linear":
            return self._linear_op("last")
        if name in _CONV:
            return self._linear_op("channel")
        if name in _POOL:
            return self._linear_op(None)
        if name == "batch_norm":
            return self._batch_norm
        if name in ("add", "sub", "radd", "rsub"):
            return self._add
        if name in ("mul", "rmul", "div", "truediv", "neg", "matmul", "rmatmul", "mm", "bmm",
                    "sum", "mean", "cat", "concat", "concatenate", "stack", "pos"):
            return self._linear_generic
        return None

    def _makes_time(self, name, args, kwargs) -> bool:
        """Step mode 'm', a model that makes its own time axis from a static input
        (``x.unsqueeze(0).expand(T, ...)`` / ``.repeat(T, ...)``): T is the new axis."""
        x = args[0]
        rep = self.reps.get(x)
        if not (self.step_mode == "m" and name in ("expand", "repeat") and rep is not None
                and rep.raw and rep.kind == STEP and self.op == 0 and x.dim() > 1
                and x.shape[0] == 1):
            return False
        sizes = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        return bool(sizes) and int(sizes[0]) > 0

    def _touches_time(self, name, args, kwargs) -> bool:
        """Step mode 'm': whether a shape operation picks, slices, splits or repeats steps of
        its input's time axis (then it runs on the per-step sequence)."""
        x = args[0]
        time = self.reps[x].time
        if time is None:
            return False
        ndim, d = x.dim(), time[0]
        if name in ("expand", "expand_as"):
            sizes = (tuple(args[1].shape) if name == "expand_as" else
                     tuple(args[1]) if len(args) == 2 and isinstance(args[1], (tuple, list))
                     else tuple(args[1:]) or tuple(kwargs.get("size", ())))
            size = sizes[d + len(sizes) - ndim]
            return int(size) not in (-1, x.shape[d])
        if name in ("repeat", "tile"):
            sizes = (tuple(args[1]) if len(args) == 2 and isinstance(args[1], (tuple, list))
                     else tuple(args[1:]) or tuple(kwargs.get("dims", kwargs.get("repeats", ()))))
            k = d + len(sizes) - ndim
            return 0 <= k < len(sizes) and int(sizes[k]) != 1
        if name == "repeat_interleave":
            dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
            return dim is None or int(dim) % ndim == d
        if name in ("chunk", "split", "tensor_split", "unbind"):
            default = 0
            dim = kwargs.get("dim", args[2] if len(args) > 2 and name != "unbind"
                             else args[1] if len(args) > 1 and name == "unbind" else default)
            return int(dim) % ndim == d
        if name == "getitem":
            return timeaxis.indexed(time, args[1], ndim) == TOUCH
        if name in ("narrow", "select"):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            return int(dim) % ndim == d
        return False

    def _shape_time(self, name, args, kwargs, x: Tensor, out: Tensor, time):
        """Step mode 'm': the time layout of the result of a shape operation that keeps the
        steps (``_touches_time`` is False)."""
        if time is None or not torch.is_tensor(out):
            return None
        ndim = x.dim()
        if name in ("view", "view_as", "reshape", "reshape_as", "flatten", "unflatten",
                    "squeeze", "unsqueeze", "ravel"):
            return timeaxis.reshaped(time, tuple(x.shape), tuple(out.shape), self.steps)
        if name == "permute":
            dims = (args[1] if len(args) == 2 and isinstance(args[1], (tuple, list))
                    else args[1:] or kwargs.get("dims"))
            return timeaxis.permuted(time, dims)
        if name in ("transpose", "swapaxes", "swapdims"):
            a = args[1] if len(args) > 1 else kwargs.get("dim0", kwargs.get("axis0"))
            b = args[2] if len(args) > 2 else kwargs.get("dim1", kwargs.get("axis1"))
            return timeaxis.swapped(time, a, b, ndim)
        if name == "t":
            return timeaxis.swapped(time, 0, 1, ndim) if ndim == 2 else time
        if name in ("movedim", "moveaxis"):
            src = args[1] if len(args) > 1 else kwargs.get("source")
            dst = args[2] if len(args) > 2 else kwargs.get("destination")
            return timeaxis.moved(time, src, dst, ndim)
        if name in ("expand", "expand_as", "repeat", "tile"):
            return timeaxis.shifted(time, out.dim() - ndim)
        if name == "getitem":
            return timeaxis.indexed(time, args[1], ndim)
        if name == "select":
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            return timeaxis.selected(time, dim, ndim, keeps=False)
        if name == "unbind":
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            return timeaxis.selected(time, dim, ndim, keeps=False)
        if out.dim() != ndim:
            return None
        return time  # clone, detach, to, contiguous, narrow, chunk, split, ...

    def _new_time(self, func, name, args, kwargs):
        out = func(*args, **kwargs)
        if not self.own_time or self.steps != out.shape[0]:
            self.own_time, self.steps = True, out.shape[0]
            self.new_sequence()
        self.reps[out] = Rep(STEP, self.call, self.t, raw=True, time=(0, 1), early=True)
        return out

    def _shape(self, func, name, args, kwargs):
        x = args[0]
        rep = self.reps[x]
        out = func(*args, **kwargs)
        rest = args[1:]
        if rep.kind == ACC and rep.base is None:  # x is the output of its site: the base
            rep = Rep(**{**rep.__dict__, "base": x})
        if rep.kind == SPIKE and rep.acc is None:  # at t = 0 the spikes are their accumulation
            rep = Rep(**{**rep.__dict__, "acc": x})
        multi = self.step_mode == "m"
        if isinstance(out, (tuple, list)):
            accs = func(rep.acc, *rest, **kwargs) if rep.kind == SPIKE else None
            for i, o in enumerate(out):
                time = self._shape_time(name, args, kwargs, x, o, rep.time) if multi else None
                if rep.kind == SPIKE:
                    self._retag(o, rep, time, acc=accs[i])
                elif rep.kind == ACC:
                    self._retag(o, rep, time, chain=rep.chain + ((_pick(func, i), rest, kwargs),))
                else:
                    self._retag(o, rep, time)
            return out
        if not torch.is_tensor(out) or out is x:
            return out
        time = self._shape_time(name, args, kwargs, x, out, rep.time) if multi else None
        if rep.kind == SPIKE:
            return self._retag(out, rep, time, acc=func(rep.acc, *rest, **kwargs))
        if rep.kind == ACC:
            return self._retag(out, rep, time, chain=rep.chain + ((func, rest, kwargs),))
        return self._retag(out, rep, time)

    def _retag(self, o: Tensor, rep: Rep, time, **changes) -> Tensor:
        self.reps[o] = Rep(**{**rep.__dict__, "time": time, **changes})
        return o

    def _f_refusal(self, op: str) -> Refusal:
        name, _, where = op.partition(" at ")
        path = where.rpartition("(in module ")[2].rstrip(")") if "(in module " in where else ""
        return Refusal(Finding(
            "" if path == "<root>" else path, name, "unsupported",
            f"{op} is not linear in the accumulations, so it runs per step; SAF-F's gradient "
            "(the Spike Representation's) is defined for linear maps between neurons only",
            "train this model with SAF-E (set_saf(net, 'E')), which runs it exactly"))

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

    # linear maps -------------------------------------------------------------

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


def _picks_by_number(args, kwargs) -> bool:
    """Whether an indexing operation on a constant picks by a Python integer (``table[t]``,
    ``select(0, t)``, ``narrow(0, t, 1)``): a step-indexed table."""
    def number(a):
        return isinstance(a, int) and not isinstance(a, bool)

    for a in list(args[1:]) + list(kwargs.values()):
        if number(a) or (isinstance(a, tuple) and any(number(i) for i in a)):
            return True
    return False


def _pick(func, i):
    def picked(x, *args, **kwargs):
        return func(x, *args, **kwargs)[i]
    return picked


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
