"""Shape operations (view, reshape, permute, indexing, ``to``, ...; dropout in eval mode): run
on the tensor as it is, keeping what it is to SAF (an accumulation stays one, with the shape
operation added to its ``chain``; a spike's accumulation gets the same operation). In step
mode 'm' the time layout follows the operation (:mod:`saf_plugin.timeaxis`), and a shape
operation that picks, slices or repeats steps runs per step instead.

A mixin of :class:`saf_plugin.runtime.Runtime`; its routes are registered in
:data:`saf_plugin.runtime.routes.ROUTES`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import timeaxis
from ..dataflow import _DROPOUT, _SHAPE, ACC, SPIKE, STEP, Rep
from ..timeaxis import TOUCH
from .routes import PER_STEP, route


class ShapeRoutes:
    """The shape route, and the time layout of its results."""

    @route(*sorted(_SHAPE))
    def _shape_route(self, func, name, args, kwargs):
        """A shape operation on a tagged tensor (else per step); in step mode 'm' one that
        makes the model's own time axis (:meth:`_makes_time`) or touches the time axis (per
        step)."""
        x = args[0] if args else None
        if not (torch.is_tensor(x) and x in self.reps):
            return PER_STEP
        if self._makes_time(name, args, kwargs):
            return self._new_time(func, name, args, kwargs)
        if self.step_mode == "m" and self._touches_time(name, args, kwargs):
            return PER_STEP  # it picks, slices or repeats steps: on the per-step sequence
        return self._shape(func, name, args, kwargs)

    @route(*sorted(_DROPOUT))
    def _dropout(self, func, name, args, kwargs):
        """Dropout that drops nothing (eval mode, p = 0) is a shape operation; else per step."""
        training = kwargs.get("training", args[2] if len(args) > 2 else True)
        p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
        if (not training or float(p) == 0) and args[0] in self.reps:
            return self._shape(func, name, args, kwargs)
        return PER_STEP

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


def _pick(func, i):
    def picked(x, *args, **kwargs):
        return func(x, *args, **kwargs)[i]
    return picked
