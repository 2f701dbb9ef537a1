"""The SAF engine: one forward of a converted model, read from its data flow.

While a converted model runs, a :class:`torch.overrides.TorchFunctionMode` sees every tensor
operation of its forward (module internals, functional calls, tensor methods, ``*``, ``@``,
indexing). Every tensor that depends on the network input carries a :class:`Rep`, one of

- ``STEP``:  the tensor *is* the per-step value v[t] (the network input, the output of a
  non-linear operation, a membrane);
- ``SPIKE``: the tensor is a neuron's real spikes s[t]; ``Rep.acc`` is their accumulation
  â[t] = λ â[t−1] + s[t] (docs/theory.md);
- ``ACC``:   the tensor is an accumulation A[t] = Σ_k λ^k v[t−k] (the output of a linear map on
  accumulations); its per-step value is v[t] = A[t] − λ A[t−1].

Tensors without a Rep are constants (parameters, buffers, numbers). Each operation is routed:

- *linear* (linear, conv, average pooling, eval-mode BatchNorm, sums of branches of one decay,
  scaling by constants, matmul with a constant): runs ONCE on accumulations; an additive
  constant β (a bias) is scaled by the series c[t] = Σ_{k≤t} λ^k. This is SAF's saving.
- *shape* (view, flatten, permute, indexing, detach, dtype casts, ...): applied to the value
  and, for a spike, to its accumulation; the representation is kept.
- *per step* (everything else: max pooling, BatchNorm in training mode, products of spike
  tensors, attention, unknown functions): runs on the per-step values, so its forward is the
  plain model's; a linear map fed by it accumulates its input again (element-wise).

Neurons (class-swapped in place, ``saf_plugin/swap.py``) take their input current in any
representation, run SAF's closed form and return the real spikes (so hooks, monitors, losses
and the model output see 0/1 spikes) tagged with their accumulation. At the model's output an
accumulation is de-accumulated (SAF-E) or divided by c[t] (SAF-F: the spike representation).

State that spans steps lives in *sites*: the k-th operation of a step is site k (per-site
accumulated input, last output). A forward that runs other operations from one step to the
next (data-dependent control flow around a stateful operation) raises instead of mixing states.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from . import core
from .errors import Finding, SAFIncompatibleError, SAFStateError

STEP, SPIKE, ACC = "step", "spike", "acc"


@dataclass
class Rep:
    """How a tensor relates to the per-step values (see the module docstring).

    ``decay``: λ of the accumulation (SPIKE, ACC). ``acc``: â of a SPIKE. ``base``/``prev``/
    ``chain``: an ACC is ``chain(base)`` where ``base`` is the output of a linear site and
    ``prev`` that site's output one step earlier (None at t = 0). ``call``: the step it was
    made in. ``seq``: the sequence step index of its first row (t). ``tm``: in step mode 'm',
    dim 0 is time-major ([T, ...] or [T·B, ...]).
    """

    kind: str
    call: int
    seq: int
    decay: float = 1.0
    acc: Optional[Tensor] = None
    base: Optional[Tensor] = None
    prev: Optional[Tensor] = None
    chain: tuple = ()
    tm: bool = True
    site: Any = None
    raw: bool = False  # derived from the network input through no neuron (a time loop's input)
    sites: tuple = ()  # the linear sites an ACC went through since its last neuron
    fout: bool = False  # SAF-F outputs collected over steps: only the model's output
    fbad: Optional[str] = None  # SAF-F: made per step (op at file:line); refused where it is used


class Site:
    """The state of one operation position in a step."""

    __slots__ = ("key", "where", "in_acc", "out_prev", "needs_prev", "recv")

    def __init__(self, key: tuple, where: str):
        self.key, self.where = key, where
        self.in_acc: dict[int, Tensor] = {}  # accumulated per-step input, per operand
        self.out_prev: Optional[Tensor] = None
        self.needs_prev = False
        self.recv: Optional[float] = None  # λ of the neuron its output reaches (OTTT's trace)

    def clear(self) -> None:
        self.in_acc = {}
        self.out_prev = None


class Refusal(Exception):
    """Raised inside a forward: the engine found something SAF cannot run exactly."""

    def __init__(self, finding: Finding):
        super().__init__(finding.line())
        self.finding = finding


def user_frame() -> str:
    """file:line of the innermost frame outside torch and saf_plugin (the user's forward)."""
    for fr in reversed(traceback.extract_stack()[:-1]):
        f = fr.filename.replace("\\", "/")
        if "/torch/" in f or "/saf_plugin/" in f or f.startswith("<"):
            continue
        return f"{fr.filename}:{fr.lineno}"
    return "<unknown>"


_INPLACE_DUNDER = {"iadd": "add_", "isub": "sub_", "imul": "mul_", "itruediv": "div_",
                   "idiv": "div_"}


# values leaving the tensor world (Python numbers, printing, NumPy): always the per-step value
_ESCAPE = {"__float__", "__int__", "__bool__", "__index__", "__complex__", "item", "tolist",
           "numpy", "__array__", "__format__", "__repr__", "__str__", "equal", "allclose",
           "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "eq", "ne", "lt", "le",
           "gt", "ge", "isclose"}


def _name(func) -> str:
    """``__add__`` -> "add", ``add_`` stays "add_" (in place), ``__iadd__`` -> "add_"."""
    name = getattr(func, "__name__", str(func))
    if name in _ESCAPE:
        return "escape"
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
    return _INPLACE_DUNDER.get(name, name)


# --------------------------------------------------------------------------- op tables

_SHAPE = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze",
    "permute", "transpose", "t", "contiguous", "clone", "detach", "to", "type", "float",
    "double", "half", "bfloat16", "cpu", "cuda", "expand", "expand_as", "getitem", "movedim",
    "moveaxis", "swapaxes", "swapdims", "narrow", "select", "chunk", "split", "unbind",
    "ravel", "alias", "repeat", "tile", "repeat_interleave",
}
_CREATE = {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
           "randint_like", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor"}
_NO_TENSOR = {"size", "dim", "numel", "get", "len", "stride", "is_contiguous", "data_ptr",
              "element_size", "nelement", "ndimension", "is_floating_point",
              "is_complex", "storage_offset"}
_POOL = {"avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
         "adaptive_avg_pool2d", "adaptive_avg_pool3d"}
_CONV = {"conv1d": 1, "conv2d": 2, "conv3d": 3, "conv_transpose1d": 1, "conv_transpose2d": 2,
         "conv_transpose3d": 3}
_DROPOUT = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
            "feature_alpha_dropout"}
_TIME_TOUCH = {"permute", "transpose", "t", "movedim", "moveaxis", "swapaxes", "swapdims",
               "narrow", "select", "chunk", "split", "unbind", "getitem", "repeat", "tile",
               "repeat_interleave", "expand", "expand_as"}


class _Mode(TorchFunctionMode):
    def __init__(self, rt: "Runtime"):
        super().__init__()
        self.rt = rt

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rt = self.rt
        if rt.paused:
            return func(*args, **kwargs)
        return rt.dispatch(func, args, kwargs)


# --------------------------------------------------------------------------- the runtime


class Runtime:
    """Per-model state of a converted model: the mode, the clock, the sites, the tags."""

    def __init__(self, root: nn.Module, mode: str, strict: bool, neurons: list, adapters: list):
        self.root, self.mode, self.strict = root, mode, strict
        self.neurons, self.adapters = neurons, adapters
        self.reps = WeakIdKeyDictionary()
        self.sites: list[Site] = []
        self.call = 0          # unique id of the current step (never reset)
        self.t = 0             # sequence step index of the current step's first row
        self.steps = 1         # time steps in this call (step mode 'm': T)
        self.step_mode = "s"
        self.started = False   # a sequence is running
        self.restart = False   # a neuron was reset since the last step
        self.active = False
        self.paused = 0
        self.op = 0            # next site index in this step
        self.loop_key = None   # the first linear map of a call: a time loop in forward repeats it
        self.loop_op = 0
        self.slots: dict[int, int] = {}
        self.states: dict[tuple[int, int], Any] = {}
        self.learning = True   # the first call after set_saf learns which sites need prev
        self.decay = 1.0
        self.record: Optional[list] = None  # check(): (where, operation, route)
        self.in_shape = None
        self.interrupted = False
        self.probed = False
        self.own_time = False  # step mode 'm': the model makes its time axis from a static input

    def default_decay(self) -> float:
        """λ of the model's first neuron: per-step inputs of linear maps are accumulated with
        it (a neuron of another decay re-accumulates its input)."""
        lam = self.adapters[0].decay(self.neurons[0])
        return float(lam.detach()) if torch.is_tensor(lam) else float(lam)

    def __deepcopy__(self, memo):
        """A copy of the model gets a runtime of its own, in its reset state."""
        from copy import deepcopy

        new = Runtime.__new__(Runtime)
        memo[id(self)] = new
        new.__init__(deepcopy(self.root, memo), self.mode, self.strict,
                     deepcopy(self.neurons, memo), self.adapters)
        return new

    def __getstate__(self):
        return {"root": self.root, "mode": self.mode, "strict": self.strict,
                "neurons": self.neurons, "adapters": self.adapters}

    def __setstate__(self, state):
        self.__init__(**state)

    # ----------------------------------------------------------------- the clock

    def begin(self, args: tuple) -> None:
        self.step_mode = next((m.step_mode for m in self.neurons
                               if isinstance(getattr(m, "step_mode", None), str)), "s")
        fresh = [a.is_fresh(m) for m, a in zip(self.neurons, self.adapters)]
        tensors = [x for x in tree_flatten(args)[0] if torch.is_tensor(x)]
        if self.step_mode == "m":
            if not tensors or tensors[0].dim() == 0:
                raise ValueError("in step mode 'm' the model's input must be [T, B, ...]")
            steps = self.steps if self.own_time else tensors[0].shape[0]
        else:
            steps = 1
        if tensors and tensors[0].dim() > 0 and tensors[0].shape[0] == 0:
            raise ValueError("the input is empty (T = 0 time steps, or a batch of 0); SAF needs "
                             "at least one step")
        reset = self.restart or bool(fresh and all(fresh))
        if self.interrupted and not reset:
            raise SAFStateError(
                "the previous step was interrupted (an exception inside forward), so the model's "
                "state is half-updated; reset the model (spikingjelly: functional.reset_net(net); "
                "snntorch: utils.reset(net)) and start the sequence again")
        self.interrupted = False
        new = not self.started or reset
        if any(fresh) and not all(fresh) and not self.restart and self.started:
            raise SAFStateError(
                "some neurons of the model were reset and others were not; under SAF reset the "
                "whole model between sequences (spikingjelly: functional.reset_net(net); "
                "snntorch: utils.reset(net))")
        shape = None if not tensors else tuple(tensors[0].shape[1 if self.step_mode == "m" else 0:])
        if not new and shape != self.in_shape:
            if not any(a.reset_on_shape_change for a in self.adapters):
                raise SAFStateError(
                    f"the input shape changed from {self.in_shape} to {shape} without a reset; "
                    "reset the model between sequences (spikingjelly: functional.reset_net(net))")
            new = True  # snnTorch starts over with a new batch size, and so does SAF
        self.in_shape = shape
        self.steps = steps
        if new:
            self.new_sequence()
        else:
            self.t += self.steps
        self.started = True
        self.call += 1
        self.op = 0
        self.loop_key = None
        self.slots.clear()
        self.decay = self.default_decay()
        for x in tensors:
            self.tag(x, STEP, raw=True)

    def new_sequence(self) -> None:
        self.t = 0
        self.restart = False
        self.states.clear()
        for s in self.sites:
            s.clear()

    def neuron_reset(self) -> None:
        """A neuron's state was reset (snnTorch reset_mem / init_leaky)."""
        if not self.active:
            self.restart = True
        elif self.op == 0 and self.t == 0:
            pass  # init_leaky() at the top of a forward: the call already starts a sequence
        elif self.op == 0:
            self.new_sequence()
            self.started = True
        else:
            raise SAFStateError(
                f"a neuron was reset in the middle of a step (after {self.op} linear maps ran); "
                "under SAF reset every neuron before the model's first layer runs (e.g. call "
                "init_leaky() at the top of forward, or utils.reset(net) between sequences)")

    def next_step(self) -> None:
        """A forward that loops over time itself (snnTorch tutorial 5) started its next step."""
        self.end()
        self.t += self.steps
        self.call += 1
        self.op = self.loop_op
        self.slots.clear()

    def end(self) -> None:
        if self.learning:
            for s in self.sites:
                if not s.needs_prev:
                    s.out_prev = None
            self.learning = False

    # ----------------------------------------------------------------- tags

    def tag(self, x: Tensor, kind: str, **kw) -> Tensor:
        self.reps[x] = Rep(kind, self.call, self.t, tm=self._tm(x), **kw)
        return x

    def _tm(self, x: Tensor) -> bool:
        return self.step_mode == "s" or (x.dim() > 0 and x.shape[0] % self.steps == 0)

    def series(self, lam: float, like: Tensor) -> Tensor:
        """c[t] for the rows of this call: [steps]."""
        return core.bias_series(self.t, self.steps, lam, like=like)

    def _rows(self, x: Tensor, lam: float, fn) -> Tensor:
        """fn(x_t, c[t]) for every time row of ``x`` (c a scalar in step mode 's', else a
        [T, 1, ...] view against x viewed as [T, -1, ...])."""
        c = self.series(lam, x)
        if self.step_mode == "s":
            return fn(x, c[0])
        self._need_tm(self._tm(x), "an affine map")
        v = x.unflatten(0, (self.steps, -1))
        return fn(v, c.view(-1, *([1] * (v.dim() - 1)))).flatten(0, 1)

    def _shift(self, out: Tensor, shift, lam: float) -> Tensor:
        """out + (c[t] − 1) β, so that Y = A â + β c[t] when ``out`` = A â + β.

        SAF-E detaches the added part (a bias gets OTTT's gradient δ, not c[t] δ); SAF-F keeps
        it (the Spike Representation's gradient)."""
        if self.mode == "E" and torch.is_tensor(shift):
            shift = shift.detach()
        if self.step_mode == "s" and self.t == 0:
            return out
        return self._rows(out, lam, lambda v, c: v + (c - 1) * shift)

    # ----------------------------------------------------------------- values

    def step_value(self, x: Tensor, rep: Rep) -> Tensor:
        """The per-step value v[t] of a tagged tensor (an accumulation is de-accumulated)."""
        if rep.kind != ACC:
            return x
        rep.site.needs_prev = True
        if rep.seq > 0 and rep.prev is None:
            raise SAFStateError(
                f"an accumulation made at {rep.site.where} is needed per step, but its previous "
                "step was not kept: the model's data flow changed between steps (data-dependent "
                "control flow); saf-plugin cannot run this model exactly")
        base = rep.base
        if self.step_mode == "s" or rep.call != self.call and base.dim() == 0:
            v = core.deaccumulate_step(base, rep.prev, rep.decay)
        else:
            self._need_tm(rep.tm, "a per-step operation")
            steps = base.shape[0] // rep.prev.shape[0] if rep.prev is not None else self.steps
            seq = base.unflatten(0, (steps, -1))
            v = core.deaccumulate(seq, rep.decay, rep.prev).flatten(0, 1).view_as(base)
        for func, args, kwargs in rep.chain:
            v = func(v, *args, **kwargs)
        return v

    def accumulated(self, x: Tensor, site: Site, slot: int = 0,
                    lam: Optional[float] = None) -> tuple[Tensor, float]:
        """(A, λ): one operand of a linear map as an accumulation (per-step values are
        accumulated here, with the decay ``lam`` or the model's first neuron's)."""
        rep = self.reps.get(x)
        fresh = rep is not None and rep.call == self.call
        if lam is None and site.recv is not None and self.step_mode == "s":
            lam = site.recv  # accumulate with the receiver's decay: OTTT's trace
        if fresh and rep.kind in (ACC, SPIKE) and (lam is None or rep.decay == lam):
            acc = x if rep.kind == ACC else rep.acc
            if self.t == 0 and self.step_mode == "s":
                site.in_acc[slot] = acc.detach()  # = the value at t = 0, whatever the decay
            return acc, rep.decay
        v = x if rep is None or rep.kind == SPIKE else self.step_value(x, rep)
        if rep is not None and rep.call != self.call:
            v = v.detach()  # state from an earlier step (recurrence): history detached
        lam = self.decay if lam is None else lam
        if not v.is_floating_point():
            return v, lam  # the plain model's error for integer input
        prev = site.in_acc.get(slot)
        if self.step_mode == "s":
            acc = core.accumulate_step(v, prev, lam)
            site.in_acc[slot] = acc.detach()
        else:
            self._need_tm(rep is None or rep.tm, "a linear map")
            seq = _accumulate_detached(v.unflatten(0, (self.steps, -1)), lam, prev)
            site.in_acc[slot] = seq[-1].detach()
            acc = seq.flatten(0, 1).view_as(v)
        return acc, lam

    def _need_tm(self, ok: bool, what: str) -> None:
        if not ok:
            raise Refusal(Finding(
                "", "time layout", "unsupported",
                f"{what} at {user_frame()} receives a tensor whose first dimension is no longer "
                f"time-major ([T, ...] or [T*B, ...] with T = {self.steps}) in step mode 'm'",
                "keep time first in step mode 'm', or use step mode 's'"))

    # ----------------------------------------------------------------- dispatch

    def site(self, name: str, args: tuple) -> Site:
        """The state of this linear map; a time loop inside forward is found here."""
        weight = next((a for a in args[1:] if torch.is_tensor(a) and a not in self.reps), None)
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
            if s.key[0] != name and self.t == 0:  # another structure (e.g. eval mode): relearn
                del self.sites[k:]
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
        bad = next((r.fbad for r in map(self.reps.get, flat) if r is not None and r.fbad), None)
        if bad is not None:
            raise self._f_refusal(bad)
        if any(r is not None and r.fout for r in map(self.reps.get, flat)):
            raise Refusal(Finding(
                "", name, "unsupported",
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
        return Refusal(Finding(
            "", name, "unsupported",
            f"{op} is not linear in the accumulations, so it runs per step; SAF-F's gradient "
            "(the Spike Representation's) is defined for linear maps between neurons only",
            "train this model with SAF-E (set_saf(net, 'E')), which runs it exactly"))

    def _per_step(self, func, name, args, kwargs, note: bool = True):
        fbad = f"{name} at {user_frame()}" if self.mode == "F" and note else None
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

    def _linear_op(self, bias_at):
        def run(func, name, args, kwargs):
            args, kwargs = list(args), dict(kwargs)
            consts = [a for a in tree_flatten((args[1:], kwargs))[0] if torch.is_tensor(a)]
            if any(a in self.reps for a in consts):
                return NotImplemented  # e.g. a weight computed from the input: per step
            site = self.site(name, tuple(args))
            self._note(site.where, name, "on accumulations")
            bias = None
            if bias_at is not None:
                if "bias" in kwargs:
                    bias = kwargs.pop("bias")
                elif len(args) > 2:
                    bias, args[2] = args[2], None
            x = args[0]
            a, lam = self.accumulated(x, site)
            args[0] = a
            out = self._split_call(func, args, kwargs, a)
            if bias is not None:
                shape = bias.shape if bias_at == "last" else (bias.shape[0], *([1] * _CONV[name]))
                b = bias.view(shape)
                out = self._shift(out + b, b, lam)
            return self._acc_out(out, lam, site, inputs=(x,))
        return run

    def _split_call(self, func, args, kwargs, a: Tensor):
        """SAF-F in step mode 'm': steps 0..T−2 build no graph (only the last step's is kept)."""
        if not (self.mode == "F" and self.step_mode == "m" and self.steps > 1
                and torch.is_grad_enabled() and self._tm(a)):
            return func(*args, **kwargs)
        k = a.shape[0] * (self.steps - 1) // self.steps
        head, tail = list(args), list(args)
        head[0], tail[0] = a[:k], a[k:].clone()
        with torch.no_grad():
            h = func(*head, **kwargs)
        return torch.cat([h, func(*tail, **kwargs)])

    def _acc_out(self, out: Tensor, lam: float, site: Site, raw: bool = False,
                 inputs: tuple = ()) -> Tensor:
        prev = site.out_prev
        up = tuple(u for a in inputs if torch.is_tensor(a) and a in self.reps
                   for u in self.reps[a].sites if self.reps[a].kind == ACC)
        if self.learning or site.needs_prev:
            site.out_prev = (out.detach() if self.step_mode == "s"
                             else out.detach().unflatten(0, (self.steps, -1))[-1])
        self.reps[out] = Rep(ACC, self.call, self.t, decay=lam, base=out, prev=prev,
                             tm=self._tm(out), site=site, raw=raw, sites=(site, *up))
        return out

    def _batch_norm(self, func, name, args, kwargs):
        names = ("input", "running_mean", "running_var", "weight", "bias", "training",
                 "momentum", "eps")
        b = dict(zip(names, args))
        b.update(kwargs)
        if b.get("training", False) or b.get("running_mean") is None:
            return NotImplemented  # batch statistics: per step
        if any(torch.is_tensor(v) and v in self.reps for k, v in b.items() if k != "input"):
            return NotImplemented
        x = b["input"]
        site = self.site(name, (x, b["running_mean"]))
        self._note(site.where, "batch_norm (eval)", "on accumulations")
        a, lam = self.accumulated(x, site)
        vals = [b.get(k) for k in names]
        vals[0] = a
        out = self._split_call(func, vals, {}, a)
        inv = torch.rsqrt(b["running_var"] + b.get("eps", 1e-5))
        shift = -b["running_mean"] * inv
        if b.get("weight") is not None:
            shift = shift * b["weight"]
        if b.get("bias") is not None:
            shift = shift + b["bias"]
        out = self._shift(out, shift.view(-1, *([1] * (a.dim() - 2))), lam)
        return self._acc_out(out, lam, site, inputs=(x,))

    def _decay_of(self, a) -> Optional[float]:
        if torch.is_tensor(a) and a in self.reps:
            rep = self.reps[a]
            if rep.call == self.call and rep.kind in (ACC, SPIKE):
                return rep.decay
        return None

    def _add(self, func, name, args, kwargs):
        if "alpha" in kwargs or len(args) != 2:
            return NotImplemented
        tagged = [torch.is_tensor(a) and a in self.reps for a in args]
        decays = {self._decay_of(a) for a, t in zip(args, tagged) if t} - {None}
        if not all(tagged):
            c = args[tagged.index(False)]
            other = args[tagged.index(True)]
            if self.step_mode == "m" and torch.is_tensor(c) and c.dim() >= other.dim():
                return NotImplemented  # a constant with a time dimension: per step
        site = self.site(name, args)
        self._note(site.where, name, "on accumulations")
        lam = site.recv if site.recv is not None and self.step_mode == "s" else (
            decays.pop() if decays else None)
        vals = list(args)
        for i, a in enumerate(args):
            if tagged[i]:
                vals[i], lam = self.accumulated(a, site, slot=i, lam=lam)
        raw = all(self.reps[a].raw for a, t in zip(args, tagged) if t)
        out = func(*vals, **kwargs)
        if not all(tagged):
            i = tagged.index(False)
            c = args[i]
            neg = (name == "sub" and i == 1) or (name == "rsub" and i == 0)
            if torch.is_tensor(c) or c != 0:
                out = self._shift(out, -c if neg else c, lam)
        return self._acc_out(out, lam, site, raw, inputs=args)

    def _linear_generic(self, func, name, args, kwargs):
        """mul/div by constants, matmul with a constant, sums and means over non-time dims,
        cat/stack of accumulations of one decay."""
        if name in ("cat", "concat", "concatenate", "stack"):
            seq = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if self.mode == "F" and self.step_mode == "s" and all(
                    torch.is_tensor(a) and a in self.reps for a in seq) and any(
                    self.reps[a].call != self.call for a in seq):
                return self._collect(func, seq, args[1:], kwargs)
            if self.step_mode == "m" and int(dim) % (seq[0].dim() + (name == "stack")) == 0:
                return NotImplemented
            decays = [self._decay_of(a) for a in seq]
            if None in decays or len(set(decays)) != 1:
                return NotImplemented
            site = self.site(name, tuple(seq))
            self._note(site.where, name, "on accumulations")
            vals = [self.accumulated(a, site, i)[0] for i, a in enumerate(seq)]
            out = func(vals, *args[1:], **kwargs)
            return self._acc_out(out, decays[0], site, inputs=tuple(seq))
        if name in ("sum", "mean"):
            x = args[0]
            if self.reps[x].kind == SPIKE:
                return NotImplemented  # spike counts and rates: on the real spikes
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim is None and self.step_mode == "m":
                return NotImplemented
            if dim is not None and self.step_mode == "m" and any(
                    int(d) % x.dim() == 0 for d in (dim if isinstance(dim, (tuple, list))
                                                    else [dim])):
                return NotImplemented
            if kwargs.get("dtype") is not None:
                return NotImplemented
        tagged = [i for i, a in enumerate(args) if torch.is_tensor(a) and a in self.reps]
        if len(tagged) != 1 or any(torch.is_tensor(v) and v in self.reps
                                   for v in kwargs.values()):
            return NotImplemented  # a product of two input-dependent tensors: per step
        i = tagged[0]
        if name in ("div", "truediv") and i != 0:
            return NotImplemented
        if name in ("matmul", "mm", "bmm", "rmatmul") and self.step_mode == "m":
            if (i == 1) != (name == "rmatmul") and args[i].dim() < 3:
                return NotImplemented  # W @ x would contract the time dimension
        site = self.site(name, args if i == 0 else (args[i], *args[:i], *args[i + 1:]))
        self._note(site.where, name, "on accumulations")
        vals = list(args)
        vals[i], lam = self.accumulated(args[i], site)
        out = func(*vals, **kwargs)
        return self._acc_out(out, lam, site, self.reps[args[i]].raw, inputs=(args[i],))

    def _collect(self, func, seq, rest, kwargs):
        """SAF-F, a forward that loops over time and stacks its per-step outputs (snnTorch
        tutorial 5): each is turned into its output form (the spike representation A[t]/c[t]),
        and the result may only leave the model."""
        out = func([self._output_one(a) for a in seq], *rest, **kwargs)
        self.reps[out] = Rep(STEP, self.call, self.t, tm=False, fout=True)
        return out

    def user_linear(self, module: nn.Module, forward: Callable, args: tuple, kwargs: dict):
        """A module declared with register_linear: its forward, once, on the accumulated input
        (its constant, if it declared one, scaled by c[t])."""
        x = args[0]
        if not self.active or self.paused or not (torch.is_tensor(x) and x in self.reps):
            return forward(module, *args, **kwargs)
        site = self.site(type(module).__name__, (x, *args[1:]))
        self._note(site.where, type(module).__name__, "on accumulations")
        a, lam = self.accumulated(x, site)
        self.paused += 1
        try:
            out = forward(module, a, *args[1:], **kwargs)
        finally:
            self.paused -= 1
        spec = module._saf_spec
        if spec.shift is not None:
            unfolded = self.step_mode == "m" and getattr(module, "step_mode", "s") == "m"
            shift = spec.shift(module, out, out.dim() - 1 - unfolded)
            if shift is not None:
                out = self._shift(out, shift, lam)
        return self._acc_out(out, lam, site, inputs=(x,))

    # ----------------------------------------------------------------- neurons

    def slot(self, module: nn.Module, make: Callable[[], Any]) -> Any:
        """The state of this call of ``module`` in the step (one per call: a module object
        used for two layers keeps two states)."""
        k = self.slots.get(id(module), 0)
        if k:
            raise Refusal(Finding(
                getattr(module, "_saf_path", ""), type(module).__name__, "unsupported",
                f"this neuron object ran twice in one time step (at {user_frame()}): its two "
                "calls share one membrane, so each call starts from the state the other left, "
                "which has no closed form in accumulations",
                "give every layer its own neuron object"))
        self.slots[id(module)] = k + 1
        key = (id(module), k)
        if key not in self.states:
            self.states[key] = make()
        return self.states[key]

    def neuron_input(self, x: Tensor, lam: float, st) -> tuple[Tensor, float]:
        """(Y, λ_in): the neuron's input current as an accumulation, and its decay.

        A per-step current (or a tensor of an earlier step) is accumulated with the neuron's
        own λ here (Y[t] = λ Y[t−1] + I[t], history detached)."""
        rep = self.reps.get(x) if torch.is_tensor(x) else None
        if rep is not None and rep.fbad:
            raise self._f_refusal(rep.fbad)
        if rep is not None and rep.call == self.call and rep.kind in (ACC, SPIKE):
            for s in rep.sites:
                s.recv = lam
            return (x if rep.kind == ACC else rep.acc), rep.decay
        v = x if rep is None else self.step_value(x, rep)
        if rep is not None and rep.call != self.call:
            v = v.detach()
        if self.step_mode == "s":
            y = core.accumulate_step(v, st.cur_acc, lam)
            st.cur_acc = y.detach()
        else:
            self._need_tm(rep is None or rep.tm, "a neuron")
            y = _accumulate_detached(v, lam, st.cur_acc)
            st.cur_acc = y[-1].detach()
        return y, lam

    def emit(self, spikes: Tensor, acc: Tensor, lam: float) -> Tensor:
        """Tag a neuron's real spikes with their accumulation."""
        self.reps[spikes] = Rep(SPIKE, self.call, self.t, decay=lam, acc=acc,
                                tm=self._tm(spikes))
        return spikes

    # ----------------------------------------------------------------- the output

    def output(self, out):
        """SAF-E: per-step values (spikes, de-accumulated readouts); SAF-F: the spike
        representation A[t]/c[t]."""
        return tree_map(self._output_one, out)

    def _output_one(self, x):
        if not torch.is_tensor(x):
            return x
        rep = self.reps.get(x)
        if rep is None:
            return x
        if rep.fbad:
            raise self._f_refusal(rep.fbad)
        if self.mode == "E" or rep.kind == STEP:
            return self.step_value(x, rep)
        a = x if rep.kind == ACC else rep.acc
        if self.step_mode == "m" and not rep.tm:
            self._need_tm(False, "the model output")
        if self.step_mode == "s":
            return a / core.bias_series(rep.seq, 1, rep.decay, like=a)[0]
        return self._rows(a, rep.decay, lambda v, c: v / c)


def _accumulate_detached(v: Tensor, lam: float, prev: Optional[Tensor]) -> Tensor:
    """A[t] = λ A[t−1] + v[t] over [T, ...], with A[t−1] a constant (as step mode 's' has it):
    the value of the accumulation, the gradient of v[t] alone."""
    return core.accumulate(v.detach(), lam, prev) + (v - v.detach())


def _pick(func, i):
    def picked(x, *args, **kwargs):
        return func(x, *args, **kwargs)[i]
    return picked


def _probe(rt: Runtime, args: tuple, kwargs: dict) -> None:
    """SAF-F's first call: run a copy of the model once, so that an operation SAF-F cannot
    take is refused before the model itself runs (and before any output)."""
    from copy import deepcopy

    rt.probed = True
    probe = deepcopy(rt.root)
    probe.__dict__["_saf_rt"].probed = True
    cpu = torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        with torch.no_grad():
            probe(*deepcopy(args), **deepcopy(kwargs))
    except SAFIncompatibleError:
        from .swap import revert

        revert(rt.root)
        raise
    except Exception:  # noqa: BLE001 - anything else shows up again in the real call
        pass
    finally:
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def run(rt: Runtime, module: nn.Module, forward: Callable, args: tuple, kwargs: dict):
    """The forward of a converted model's root: the user's forward under the engine."""
    if rt.active:
        return forward(module, *args, **kwargs)
    if rt.mode == "F" and not rt.probed:
        _probe(rt, args, kwargs)
    rt.active = True
    try:
        rt.begin(args)
        with _Mode(rt):
            out = forward(module, *args, **kwargs)
        out = rt.output(out)
        rt.end()
        return out
    except Refusal as r:
        from .swap import revert

        rt.started = False
        revert(rt.root)
        raise SAFIncompatibleError([r.finding], header=(
            "SAF cannot run this model exactly; the model was switched back to the plain "
            "model (nothing was trained)")) from None
    except BaseException:
        rt.interrupted = rt.started  # the next call must follow a reset
        raise
    finally:
        rt.active = False
