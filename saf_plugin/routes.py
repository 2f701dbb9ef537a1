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

from .dataflow import (_CONV, _CREATE, _DROPOUT, _NO_TENSOR, _POOL, _SHAPE, _TIME_TOUCH, ACC,
                       SPIKE, STEP, Refusal, Rep, Site, _name, module_path, user_frame)
from .errors import Finding, SAFStateError
from .modes import Mode


class Routes:
    """The operation routes of the runtime (a mixin of :class:`saf_plugin.runtime.Runtime`;
    the linear maps are :class:`saf_plugin.linear_routes.LinearRoutes`)."""

    # ----------------------------------------------------------------- dispatch

    def site(self, name: str, args: tuple) -> Site:
        """The state of this linear map; a time loop inside forward is found here."""
        weight = next((a for a in args[1:] if isinstance(a, nn.Parameter)), None)
        key = (name, None if weight is None else id(weight))
        if self.step_mode == "s":
            data = self.reps.get(args[0]) if torch.is_tensor(args[0]) else None
            if self.loop_key is None:
                self.loop_key, self.loop_op = key, self.op
            elif key == self.loop_key and data is not None and data.raw:
                self.next_step()  # the forward's own loop over time started its next step
        k = self.op
        self.op += 1
        if k < len(self.sites):
            s = self.sites[k]
            if s.key != key and self.t == 0:  # another structure (e.g. eval mode): relearn
                del self.sites[k:]
            elif s.key[0] == name and s.key != key:
                raise Refusal(Finding(
                    module_path(), name, "unsupported",
                    f"the {name} at {user_frame()} uses other constants (weights) than in the "
                    "step before: a linear map that changes from step to step (e.g. one "
                    "BatchNorm per time step, snntorch.BatchNormTT) is not one linear map on "
                    "accumulations",
                    "use one module for every step, or train with BPTT"))
            elif s.key[0] != name:
                raise SAFStateError(
                    f"linear map {k} of this step is {name} at {user_frame()}, but it was "
                    f"{s.key[0]} at {s.where} in an earlier step: the forward runs other "
                    "operations from step to step (data-dependent control flow), so SAF's "
                    "per-operation state would be mixed up; saf-plugin cannot run this exactly")
            return s
        s = Site(key, user_frame())
        s.needs_prev = not self.learning  # learnt in the first call; later sites keep prev
        self.sites.append(s)
        return s

    def dispatch(self, func, args: tuple, kwargs: dict):
        name = _name(func)
        if name in _NO_TENSOR:
            return func(*args, **kwargs)
        flat = [a for a in tree_flatten((args, kwargs))[0] if torch.is_tensor(a)]
        if not any(a in self.reps for a in flat) or name in _CREATE:
            return func(*args, **kwargs)
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
            if self.step_mode == "m" and name in _TIME_TOUCH and self._touches_time(
                    name, args, kwargs):
                return None
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
        x = args[0]
        if name in ("expand", "expand_as", "repeat", "tile", "repeat_interleave", "chunk",
                    "split", "unbind", "t"):
            return True
        if name == "getitem":
            idx = args[1]
            first = idx[0] if isinstance(idx, tuple) and idx else idx
            return not ((isinstance(first, slice) and first == slice(None)) or first is ...)
        if name == "permute":
            dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
            return int(dims[0]) % x.dim() != 0
        if name in ("transpose", "swapaxes", "swapdims", "movedim", "moveaxis"):
            dims = list(args[1:3])
            if any(isinstance(d, (tuple, list)) for d in dims):
                return True
            return any(int(d) % x.dim() == 0 for d in dims)
        if name in ("narrow", "select"):
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            return int(dim) % x.dim() == 0
        return False

    def _new_time(self, func, name, args, kwargs):
        out = func(*args, **kwargs)
        if not self.own_time or self.steps != out.shape[0]:
            self.own_time, self.steps = True, out.shape[0]
            self.new_sequence()
        self.reps[out] = Rep(STEP, self.call, self.t, raw=True, tm=True)
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
        if isinstance(out, (tuple, list)):
            accs = func(rep.acc, *rest, **kwargs) if rep.kind == SPIKE else None
            for i, o in enumerate(out):
                if rep.kind == SPIKE:
                    self._retag(o, rep, acc=accs[i])
                elif rep.kind == ACC:
                    self._retag(o, rep, chain=rep.chain + ((_pick(func, i), rest, kwargs),))
                else:
                    self._retag(o, rep)
            return out
        if not torch.is_tensor(out) or out is x:
            return out
        if rep.kind == SPIKE:
            return self._retag(out, rep, acc=func(rep.acc, *rest, **kwargs))
        if rep.kind == ACC:
            return self._retag(out, rep, chain=rep.chain + ((func, rest, kwargs),))
        return self._retag(out, rep)

    def _retag(self, o: Tensor, rep: Rep, **changes) -> Tensor:
        new = Rep(**{**rep.__dict__, **changes})
        new.tm = rep.tm and self._tm(o)
        self.reps[o] = new
        return o

    def _f_refusal(self, op: str) -> Refusal:
        name, _, where = op.partition(" at ")
        path = where.rpartition("(in module ")[2].rstrip(")") if "(in module " in where else ""
        return Refusal(Finding(
            "" if path == "<root>" else path, name, "unsupported",
            f"{op} is not linear in the accumulations, so it runs per step; SAF-F's gradient "
            "(the Spike Representation's) is defined for linear maps between neurons only",
            "train this model with SAF-E (set_saf(net, 'E')), which runs it exactly"))

    def _per_step(self, func, name, args, kwargs, note: bool = True):
        fbad = f"{name} at {user_frame()}" if self.mode == Mode.F and note else None
        if self.record is not None and note:
            self._note(user_frame(), name, "per step")
        tagged = [a for a in tree_flatten((args, kwargs))[0]
                  if torch.is_tensor(a) and a in self.reps]
        reps = [self.reps[a] for a in tagged]
        tm = all(r.tm for r in reps)
        raw = all(r.raw for r in reps)
        dims0 = {a.shape[0] for a in tagged if a.dim() > 0}

        def value(a):
            if torch.is_tensor(a):
                rep = self.reps.get(a)
                if rep is not None:
                    return self.step_value(a, rep)
            return a

        out = func(*tree_map(value, args), **tree_map(value, kwargs))
        for o in tree_flatten(out)[0]:
            if torch.is_tensor(o):
                self.reps[o] = Rep(STEP, self.call, self.t, raw=raw, fbad=fbad, tm=tm and (
                    self.step_mode == "s" or (o.dim() > 0 and o.shape[0] in dims0)))
        return out

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
        flat = [a for a in tree_flatten((args, kwargs))[0] if torch.is_tensor(a)]
        if not self.active or self.paused or not any(a in self.reps for a in flat):
            return forward(module, *args, **kwargs)

        self.paused += 1  # (called from the module, not from the mode: pause it ourselves)
        try:
            return self._per_step(lambda *a, **k: forward(module, *a, **k),
                                  type(module)._saf_base.__name__, args, kwargs)
        finally:
            self.paused -= 1


def _pick(func, i):
    def picked(x, *args, **kwargs):
        return func(x, *args, **kwargs)[i]
    return picked
