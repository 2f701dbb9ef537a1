"""The SAF runtime: one forward of a converted model, read from its data flow.

While a converted model runs (``saf_plugin/engine.py``), a
:class:`torch.overrides.TorchFunctionMode` sees every tensor operation of its forward (module
internals, functional calls, tensor methods, ``*``, ``@``, indexing) and hands it to
:class:`Runtime`, which routes it (``saf_plugin/routes.py``, ``saf_plugin/linear_routes.py``) by
what the tensors are (``saf_plugin/dataflow.py``): linear maps once per step on accumulations,
shape operations on the value, everything else per step on the real values.

Neurons (class-swapped in place, ``saf_plugin/swap.py``) take their input current in any
representation, run SAF's closed form or their own step (``saf_plugin/neuron_step.py``) and
return the real spikes (so hooks, monitors, losses and the model output see 0/1 spikes)
tagged with their accumulation. At the model's output an
accumulation is de-accumulated (SAF-E) or divided by c[t] (SAF-F: the spike representation).
The runtime also keeps the step index t and the steps T of a call (step mode 'm'), and
the per-sequence state, reset with each library's own reset. See docs/theory.md.
With ``set_saf(..., accumulate=torch.float64)`` every accumulation is float64 and every
per-step value the model's dtype (``high``/``low`` in ``saf_plugin/linear_routes.py``).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from . import core
from .dataflow import (ACC, SPIKE, STEP, Refusal, Rep, Site, Tags, module_path, tensors_in,
                       user_frame)
from .engine import no_checkpoint
from .errors import Finding, SAFStateError, WeightChangeWarning
from .modes import Mode
from .registry import model_step_mode, reset_advice
from .linear_routes import LinearRoutes
from .routes import Routes


# --------------------------------------------------------------------------- the runtime


@dataclass
class Learned:
    """What a probe (``saf_plugin/engine.py``, ``_probe``) learnt of one call signature in step
    mode 'm': the input's time layout (None: the input has no time axis SAF can use), the steps
    T of a call, the neuron (its path) each linear site feeds, by site index, and whether the
    guessed input time reached every neuron fed from the input as its time axis."""

    input_time: Optional[tuple]
    steps: int
    receivers: dict
    confirmed: bool


class _StopProbe(Exception):
    """A probe learnt what it tested (a neuron got another time axis than guessed)."""


class Runtime(Routes, LinearRoutes):
    """Per-model state of a converted model: the mode, the step index, the sites, the tags."""

    def __init__(self, root: nn.Module, mode: str, neurons: list, adapters: list,
                 accumulate: Optional[torch.dtype] = None, on_weight_change: str = "warn"):
        self.root, self.mode = root, mode
        self.on_weight_change = on_weight_change  # set_saf's option (see watch_weights)
        self.neurons, self.adapters = neurons, adapters
        self.accumulate = accumulate  # dtype of the accumulations (None: the values' own)
        self.dtype = None      # with ``accumulate``: the model's dtype (per-step values)
        self.reps = Tags()
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
        self.slots: dict[int, int] = {}  # neurons that ran in this step
        self.fired = False     # a neuron ran in this step
        self.ran: set[int] = set()  # neurons that ran in this sequence
        self.chains: dict[int, list] = {}  # stateless snnTorch neurons: their membrane chains
        self.states: dict[int, Any] = {}  # SAF state per neuron (id), for this sequence
        self.snapshot: Optional[list] = None  # the buffers before the first call
        self.learning = True   # the first call after set_saf learns which sites need prev
        self.decay = 1.0
        self.record: Optional[list] = None  # check(): (where, operation, route)
        self.in_shape = None
        self.interrupted = False
        self.probed = False
        self.own_time = False  # step mode 'm': the model makes its time axis from a static input
        self._series: dict[tuple, Tensor] = {}
        self.undo: Optional[list] = None  # (buffer, its value) before this call changed it
        self.buffers: Optional[WeakIdKeyDictionary] = None  # the model's buffers (at its first call)
        self.copied_mid_sequence = False  # a deep copy or unpickled copy of a running model
        self.warned_weights = False
        self.adapter_of = {id(m): a for m, a in zip(neurons, adapters)}
        self.learned: dict = {}  # step mode 'm': call signature -> Learned (engine._probe)
        self.lesson_now: Optional[Learned] = None  # what the current call uses
        self.probing = False   # a probe copy: False, or (input dim guessed as time, its size)
        self.stopped = False   # a probe stopped early (it learnt what it tested)
        self.seen: list = []   # a probe: (time layout, rows) of each neuron input from the input

    def model_step_mode(self) -> str:
        """"s" or "m", as the neurons' library gives it (:func:`registry.model_step_mode`)."""
        return model_step_mode(self.neurons)

    def signature(self, args: tuple):
        """Step mode 'm': what a probe's findings depend on (input shapes, training flags);
        None in step mode 's' (the first step learns by itself)."""
        if self.model_step_mode() != "m":
            return None
        shapes = tuple(tuple(x.shape) for x in tree_flatten(args)[0] if torch.is_tensor(x))
        return shapes, tuple(m.training for m in self.root.modules())

    def lesson(self, real: "Runtime") -> Learned:
        """A probe's findings, with the real model's neurons in place of the copy's."""
        paths = {id(m): getattr(m, "_saf_path", None) for m in self.neurons}
        real_by_path = {getattr(m, "_saf_path", None): m for m in real.neurons}
        receivers = {k: real_by_path.get(paths.get(id(s.recv_from)))
                     for k, s in enumerate(self.sites) if s.recv_from is not None}
        dim = self.probing[0] if self.probing else None
        confirmed = bool(self.seen) and all(t == (0, 1) and rows == self.steps
                                            for t, rows in self.seen)
        steps = self.seen[0][1] if self.seen else self.steps
        return Learned(None if dim is None else (dim, 1), steps, receivers, confirmed)

    def default_decay(self) -> float:
        """λ of the model's first neuron: per-step inputs of linear maps are accumulated with
        it (a neuron of another decay re-accumulates its input)."""
        return self.adapters[0].lam(self.neurons[0])

    def __deepcopy__(self, memo):
        """A copy of the model gets a runtime of its own, in its reset state."""
        from copy import deepcopy

        new = Runtime.__new__(Runtime)
        memo[id(self)] = new
        new.__init__(deepcopy(self.root, memo), self.mode, deepcopy(self.neurons, memo),
                     self.adapters, self.accumulate, self.on_weight_change)
        new.copied_mid_sequence = self.started
        return new

    def __getstate__(self):
        return {"root": self.root, "mode": self.mode, "neurons": self.neurons,
                "adapters": self.adapters, "accumulate": self.accumulate,
                "on_weight_change": self.on_weight_change, "mid": self.started}

    def __setstate__(self, state):
        mid = state.pop("mid", False)
        state.pop("strict", None)  # (models saved by earlier versions)
        self.__init__(**state)
        self.copied_mid_sequence = mid

    # ----------------------------------------------------------------- steps and sequences

    def begin(self, args: tuple, sig=None) -> None:
        self.step_mode = self.model_step_mode()
        fresh = [a.is_fresh(m) for m, a in zip(self.neurons, self.adapters)]
        tensors = tensors_in(args)
        if self.buffers is None:
            self.buffers = WeakIdKeyDictionary({b: True for b in self.root.buffers()})
        input_time = None
        if self.step_mode == "m":
            if not tensors or tensors[0].dim() == 0:
                raise ValueError("in step mode 'm' the model's input must be [T, B, ...]")
            if self.probing:
                dim, steps = self.probing
                input_time = None if dim is None else (dim, 1)
                self.lesson_now = None
            else:
                self.lesson_now = self.learned.get(sig)
                input_time = (0, 1) if self.lesson_now is None else self.lesson_now.input_time
                steps = (self.lesson_now.steps if input_time is None and self.lesson_now
                         else tensors[0].shape[input_time[0]])
            if self.own_time:
                steps = self.steps
        else:
            steps = 1
        for x in tensors:  # accumulations of ±inf give inf − inf = nan: not the plain model
            if x.is_floating_point() and x.device.type == "cpu" and not bool(
                    torch.isfinite(x).all()):
                raise ValueError(
                    "the input holds nan or ±inf; SAF accumulates its input (â[t] = λ â[t−1] + "
                    "x[t]), where a non-finite value never leaves and inf − inf gives nan, so "
                    "SAF refuses it (on CUDA this is not checked: it would synchronise every "
                    "step); clean the input, or run the plain model")
        if tensors and tensors[0].dim() > 0 and tensors[0].shape[0] == 0:
            raise ValueError("the input is empty (T = 0 time steps, or a batch of 0); SAF needs "
                             "at least one step")
        ran = [f for f, m in zip(fresh, self.neurons) if id(m) in self.ran]
        reset = self.restart or bool(fresh and all(fresh)) or bool(ran and all(ran))
        if self.copied_mid_sequence and not reset:
            raise SAFStateError(
                "this model is a copy (copy.deepcopy, torch.save/load) of a SAF model in the "
                "middle of a sequence; SAF's per-sequence state is not copied, so the copy "
                f"cannot continue that sequence: reset it before running it {reset_advice(self.neurons)}")
        self.copied_mid_sequence = False
        if self.interrupted and not reset:
            raise SAFStateError(
                "the previous step was interrupted (an exception inside forward), so the model's "
                f"state is half-updated; reset the model {reset_advice(self.neurons)} and start the sequence again")
        self.interrupted = False
        if not self.started and any(a.plain_state is not None and a.plain_state(m)
                                    for m, a in zip(self.neurons, self.adapters)):
            raise SAFStateError(
                "the model's neurons hold a state from a run before set_saf; SAF cannot continue "
                f"a sequence the plain model started: reset the model first {reset_advice(self.neurons)}")
        new = not self.started or reset
        ran = [f for f, m in zip(fresh, self.neurons) if id(m) in self.ran]
        if any(ran) and not all(ran) and not self.restart and self.started:
            raise SAFStateError(
                "some neurons of the model were reset and others were not; under SAF reset the "
                f"whole model between sequences {reset_advice(self.neurons)}")
        shape = None if not tensors else tuple(tensors[0].shape[1 if self.step_mode == "m" else 0:])
        if not new and shape != self.in_shape:
            if not any(a.reset_on_shape_change for a in self.adapters):
                raise SAFStateError(
                    f"the input shape changed from {self.in_shape} to {shape} without a reset; "
                    f"reset the model between sequences {reset_advice(self.neurons)}")
            new = True  # snnTorch starts over with a new batch size, and so does SAF
        self.in_shape = shape
        self.steps = steps
        if new:
            self.new_sequence()
        else:
            self.t += self.steps
        self.started = True
        self.call += 1
        self.reps.recent.clear()
        self.op = 0
        self.loop_key = None
        self.slots.clear()
        self.fired = False
        self.decay = self.default_decay()
        if self.accumulate is not None:
            self.dtype = self.model_dtype(tensors)
        for i, x in enumerate(tensors):  # step mode 'm': the first input's time, as learnt
            self.tag(x, STEP, raw=True, early=True, time=input_time if i == 0 else None)

    def new_sequence(self) -> None:
        self.t = 0
        self.restart = False
        self.states.clear()
        self.ran.clear()
        self.chains.clear()
        for s in self.sites:
            s.clear()

    def neuron_reset(self, module: Optional[nn.Module] = None) -> None:
        """A neuron's state was reset (snnTorch reset_mem / init_leaky, SpikingJelly's reset).

        Between calls: the next call starts a sequence. At the top of a forward (before any
        linear map): the call starts one. Later in a forward (a second loop over time after
        the first, an encoder then a decoder): that neuron starts afresh from this step, its
        input current accumulated from here on (:meth:`neuron_input`)."""
        if not self.active:
            self.restart = True
        elif self.op == 0 and self.t == 0:
            pass  # init_leaky() at the top of a forward: the call already starts a sequence
        elif self.op == 0:
            self.new_sequence()
            self.started = True
        elif module is not None:
            self.states.pop(id(module), None)
            self.slots.pop(id(module), None)  # (step mode 'm': it may run again in this call)

    def next_step(self) -> None:
        """A forward that loops over time itself (snnTorch tutorial 5) started its next step
        (the first call keeps learning which sites need their previous output until it ends:
        readouts stacked over the loop are de-accumulated at the model's output)."""
        self.t += self.steps
        self.call += 1
        self.op = self.loop_op
        self.slots.clear()
        self.fired = False

    def end(self) -> None:
        if self.learning:
            for s in self.sites:
                if not s.needs_prev:
                    s.out_prev = None
            self.learning = False

    # ----------------------------------------------------------------- tags

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
        key = (float(lam), like.dtype, like.device)
        c = self._series.get(key)
        if c is None or c.shape[0] < t0 + steps:
            if len(self._series) > 64:
                self._series.clear()
            c = self._series[key] = core.bias_series(0, max(64, 2 * (t0 + steps)), lam, like=like)
        return c[t0:t0 + steps]

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

    # ----------------------------------------------------------------- values

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

    def _lost(self, what: str):
        """The data flow differs from step to step where SAF keeps state per operation: in the
        first call a refusal (before any output), later an error."""
        why = (f"{what}: the forward runs other operations from step to step (data-dependent "
               "control flow, or a loop over time inside forward that saf-plugin could not "
               "find: it finds the steps of a forward's own loop by the loop's first linear "
               "map on the model input), so SAF's per-operation state would be mixed up")
        if self.learning:
            return Refusal(Finding(module_path(), "data flow", "unsupported", why,
                                   "run the model one step per call, or train it with BPTT"))
        return SAFStateError(why + "; saf-plugin cannot run this model exactly")

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

    def watch_weights(self, site: Site, consts) -> None:
        """A linear map's parameters must not change within a sequence for SAF-E to follow the
        plain model: their versions (advanced by every in-place update: an optimizer step,
        ``load_state_dict``) are compared with the previous step's."""
        versions = tuple(c._version for c in consts if isinstance(c, nn.Parameter))
        seen, site.versions = site.versions, versions
        if seen is None or seen == versions or self.on_weight_change == "accept":
            return
        why = (f"the weights of the linear map at {site.where} changed in the middle of a "
               "sequence (an optimizer step at every time step, load_state_dict). SAF-E then "
               "computes Y[t] = W_new â[t]: the accumulation of all past spikes meets the "
               "current weights, where the plain model's past steps keep the weights they met, "
               "so the two forwards drift apart slightly (docs/theory.md)")
        if self.on_weight_change == "raise":
            raise SAFStateError(why + "; update the weights between sequences, or pass "
                                "set_saf(..., on_weight_change='accept')")
        if not self.warned_weights:
            self.warned_weights = True
            warnings.warn(why + ". This is SAF-E's online semantics (OTTT_O); to silence this "
                          "pass set_saf(..., on_weight_change='accept'), to refuse it 'raise'",
                          WeightChangeWarning, stacklevel=2)

    # ----------------------------------------------------------------- neurons

    no_checkpoint = staticmethod(no_checkpoint)  # (routes.py: every routed operation)

    def slot(self, module: nn.Module, make: Callable[[], Any], key=None) -> Any:
        """The SAF state of neuron ``module`` for this sequence (a neuron called twice in one
        step is refused: its two calls would share one membrane), or of one of its membrane
        chains (``key``: a stateless neuron that two layers share, their membranes passed in
        and out)."""
        key = id(module) if key is None else key
        if self.slots.get(key):
            raise Refusal(Finding(
                getattr(module, "_saf_path", ""),
                getattr(type(module), "_saf_base", type(module)).__name__, "unsupported",
                f"this neuron object ran twice in one time step (at {user_frame()}): its two "
                "calls share one membrane, so each call starts from the state the other left, "
                "which has no closed form in accumulations",
                "give every layer its own neuron object"))
        no_checkpoint()  # a neuron inside torch.utils.checkpoint
        self.slots[key] = 1
        self.fired = True
        self.ran.add(id(module))
        if key not in self.states:
            self.states[key] = make()
            self.states[key].since = self.t
        return self.states[key]

    @contextmanager
    def pausing(self):
        """Run SAF's own tensor work (not the model's operations) without routing it, and
        without the mode's per-operation cost (``torch._C.DisableTorchFunction``)."""
        self.paused += 1
        try:
            with torch._C.DisableTorchFunction():
                yield
        finally:
            self.paused -= 1

    def real_input(self, x):
        """A neuron's input as the plain model has it (hooks watch the neuron): an
        accumulation becomes its per-step values, which remember it (``Rep.origin``), so the
        neuron still takes the accumulation when it gets them unchanged."""
        rep = self.reps.get(x) if torch.is_tensor(x) else None
        if rep is None or rep.kind != ACC:
            return x  # spikes and per-step values are the plain model's already
        with self.pausing():
            v = self.step_value(x, rep)
        if v is x:  # the first step: an accumulation is its own per-step value
            return x
        self.reps[v] = Rep(STEP, self.call, self.t, time=rep.time, raw=rep.raw, fbad=rep.fbad,
                           origin=x, early=rep.early)
        return v

    def _origin(self, x):
        """(x, its Rep), or the accumulation x was made from for hooks (:meth:`real_input`)."""
        rep = self.reps.get(x) if torch.is_tensor(x) else None
        if rep is not None and rep.origin is not None and rep.origin in self.reps:
            return rep.origin, self.reps[rep.origin]
        return x, rep

    def neuron_input(self, x: Tensor, lam: float, st, module=None) -> tuple[Tensor, float]:
        """(Y, λ_in): the neuron's input current as an accumulation, and its decay.

        A per-step current (or a tensor of an earlier step) is accumulated with the neuron's
        own λ here (Y[t] = λ Y[t−1] + I[t], history detached). Sets ``st.dtype``, the dtype
        the neuron returns its per-step values in (with ``accumulate``: the model's)."""
        st.dtype = None if self.accumulate is None else self.dtype
        x, rep = self._origin(x)
        if rep is not None and rep.fbad:
            raise self._f_refusal(rep.fbad)
        if self.probing and rep is not None and rep.early:
            self._probe_sees(rep, x)
        if self.step_mode == "m" and torch.is_tensor(x) and x.dim() > 0 and (
                x.shape[0] != self.steps):
            raise Refusal(Finding(
                module_path(), "time layout", "unsupported",
                f"a neuron at {user_frame()} receives {x.shape[0]} rows along dim 0, its time "
                f"axis in step mode 'm', but the sequence has T = {self.steps} steps",
                "pass the neuron [T, B, ...] (fold time back out of the batch first, e.g. "
                "with SeqToANNContainer)"))
        if rep is not None and rep.call == self.call and rep.kind in (ACC, SPIKE) and (
                self.step_mode == "s" or rep.time == (0, 1)) and st.since == 0:
            self._receives(rep, lam, module)
            return self.high(x if rep.kind == ACC or rep.acc is None else rep.acc), rep.decay
        v = x if rep is None else self.step_value(x, rep)
        if rep is not None and rep.call != self.call:
            v = v.detach()
        v = self.high(v)
        if self.step_mode == "s":
            y = core.accumulate_step(v, st.cur_acc, lam)
            st.cur_acc = y.detach()
        else:  # dim 0 is the neuron's time, whatever the input's layout (the plain neuron's)
            y = _accumulate_detached(v, lam, st.cur_acc)
            st.cur_acc = y[-1].detach()
        return y, lam

    def _probe_sees(self, rep: Rep, x: Tensor) -> None:
        """A probe: a neuron fed from the input gets (layout, rows); stop at a contradiction
        (the guessed input time did not arrive as this neuron's time axis)."""
        rows = x.shape[0] if x.dim() else 0
        self.seen.append((rep.time, rows))
        if self.probing[0] is not None and (rep.time != (0, 1) or rows != self.steps):
            self.stopped = True
            raise _StopProbe

    def _receives(self, rep: Rep, lam: float, module) -> None:
        """The linear maps that made a neuron's input learn the neuron (OTTT's trace: their
        input is accumulated with its decay; step mode 's' from the next step, 'm' from the
        next call and, through the probe, the first)."""
        for s in rep.sites:  # the first receiver of a sequence, at its first step, stands:
            if s.recv is None or (s.recv_call != self.call and self.t == s.since):  # the trace
                s.recv, s.recv_from, s.recv_call = lam, module, self.call  # may change only
                                                                           # where it starts
            if lam != rep.decay:  # from the next step on these maps take per-step inputs
                s.needs_prev = True

    def receiver_decay(self, site: Site) -> Optional[float]:
        """λ of the neuron a linear site feeds, if known (read now: a learnable decay)."""
        if self.step_mode == "s":
            return site.recv
        if site.recv_from is None:
            return None
        return self.adapter_of[id(site.recv_from)].lam(site.recv_from)

    def neuron_current(self, x, lam: float, module=None):
        """I[t]: a per-step neuron's input current as per-step values (an accumulation is
        de-accumulated, a tensor of an earlier step detached). The linear maps that feed it
        accumulate with its λ from the next step on (in step mode 's'), so their weights see
        OTTT's trace."""
        x, rep = self._origin(x)
        if rep is None:
            return x
        if self.probing and rep.early and self.step_mode == "m":
            self._probe_sees(rep, x)
        if rep.fbad:
            raise self._f_refusal(rep.fbad)
        if rep.call == self.call and rep.kind in (ACC, SPIKE):
            self._receives(rep, lam, module)
        v = self.step_value(x, rep)
        return v.detach() if rep.call != self.call else v

    def emit_steps(self, out, lam: float = 1.0):
        """Tag the outputs of a per-step neuron (spikes, states) as per-step values, with the
        neuron's decay λ (a map fed by them and no other neuron takes its trace with it)."""
        for o in tensors_in(out):
            if o.is_floating_point():
                self.reps[o] = Rep(STEP, self.call, self.t, time=self.neuron_time(o), decay=lam,
                                   sent=True)
        return out

    def emit(self, spikes: Tensor, acc: Tensor, lam: float, since: int = 0) -> Tensor:
        """Tag a neuron's real spikes with their accumulation (None: the spikes themselves, as
        at t = 0; a Rep never holds its own key, or the weak table would keep it)."""
        self.reps[spikes] = Rep(SPIKE, self.call, self.t, decay=lam,
                                acc=None if acc is spikes else acc,
                                time=self.neuron_time(spikes), since=since)
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
        if self.mode == Mode.E or rep.kind == STEP:
            return self.step_value(x, rep)
        if self.step_mode == "s":
            a = x if rep.kind == ACC or rep.acc is None else rep.acc
            return self.low(a / self.series(rep.decay, a, t=rep.seq, since=rep.since)[0])
        if rep.kind == SPIKE:
            return self.low(self._rows(x if rep.acc is None else rep.acc, rep.decay,
                                       lambda v, c: v / c, rep.time, rep.since))
        base = x if rep.base is None else rep.base  # A[t]/c[t] on the map's output, then the
        r = self.low(self._rows(base, rep.decay, lambda v, c: v / c, rep.site.time,  # shapes
                                rep.since))
        for func, args, kwargs in rep.chain:
            r = func(r, *args, **kwargs)
        return r


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
