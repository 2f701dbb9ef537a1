"""What passes between the engine and the neurons, and the model's output.

A neuron (its SAF class, :mod:`saf_plugin.neuron_step`) gets its input current from the engine
as an accumulation with its decay (:meth:`NeuronIO.neuron_input`: the closed form) or as
per-step values (:meth:`NeuronIO.neuron_current`: the per-step route), and hands back its real
spikes tagged with their accumulation (:meth:`NeuronIO.emit`) or per-step outputs
(:meth:`NeuronIO.emit_steps`). Its state for the sequence is one slot per neuron
(:meth:`NeuronIO.slot`). At the model's output an accumulation becomes its per-step values
(SAF-E) or the spike representation A[t]/c[t] (SAF-F) (:meth:`NeuronIO.output`).

A mixin of :class:`saf_plugin.runtime.Runtime`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from .. import core
from ..dataflow import ACC, SPIKE, STEP, Refusal, Rep, Site, module_path, tensors_in, user_frame
from ..errors import Finding
from ..modes import Mode
from .values import _accumulate_detached


class StopProbe(Exception):
    """A probe learnt what it tested (a neuron got another time axis than guessed)."""


class _Paused:
    """:meth:`NeuronIO.pausing`'s context (a class: a generator context manager costs several
    Python calls more per neuron step)."""

    __slots__ = ("rt", "off")

    def __init__(self, rt):
        self.rt, self.off = rt, None

    def __enter__(self):
        self.rt.paused += 1
        try:
            self.off = torch._C.DisableTorchFunction()
            self.off.__enter__()
        except BaseException:
            self.rt.paused -= 1
            raise

    def __exit__(self, *exc):
        try:
            self.off.__exit__(*exc)
        finally:
            self.rt.paused -= 1
        return False


class NeuronIO:
    """Neuron inputs and outputs, their per-sequence slots, and the model's output."""

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
        self.no_checkpoint()  # a neuron inside torch.utils.checkpoint
        self.slots[key] = 1
        self.fired = True
        self.ran.add(id(module))
        if key not in self.states:
            self.states[key] = make()
            self.states[key].since = self.t
        return self.states[key]

    def pausing(self) -> "_Paused":
        """Run SAF's own tensor work (not the model's operations) without routing it, and
        without the mode's per-operation cost (``torch._C.DisableTorchFunction``)."""
        return _Paused(self)

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
            raise StopProbe

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
            return self.low(a / self.series_now(rep.decay, a, rep.since, t=rep.seq))
        if rep.kind == SPIKE:
            return self.low(self._rows(x if rep.acc is None else rep.acc, rep.decay,
                                       lambda v, c: v / c, rep.time, rep.since))
        base = x if rep.base is None else rep.base  # A[t]/c[t] on the map's output, then the
        r = self.low(self._rows(base, rep.decay, lambda v, c: v / c, rep.site.time,  # shapes
                                rep.since))
        for func, args, kwargs in rep.chain:
            r = func(r, *args, **kwargs)
        return r
