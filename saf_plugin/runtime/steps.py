"""The per-sequence state of the engine: calls, steps, sequences and sites.

A call of the converted model is one step (step mode 's') or T steps (step mode 'm');
:meth:`Steps.begin` starts it (the input's time layout, whether a new sequence starts, the
refusals of a sequence SAF cannot continue), :meth:`Steps.end` ends it. A forward that loops
over time itself starts its next step at :meth:`Steps.next_step`. A neuron's library reset
reaches :meth:`Steps.neuron_reset`. The k-th linear map of a step is site k
(:meth:`Steps.site`, :class:`saf_plugin.dataflow.Site`), whose state (its accumulated inputs
and previous output) lives for the sequence.

A mixin of :class:`saf_plugin.runtime.Runtime`.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from ..dataflow import STEP, Refusal, Site, module_path, tensors_in, user_frame
from ..errors import Finding, SAFStateError, WeightChangeWarning
from ..registry import reset_advice


class Steps:
    """Calls, steps and sequences; the sites of the linear maps."""

    def begin(self, args: tuple, sig=None) -> None:
        """Start a call of the model on ``args`` (``sig``: its signature in step mode 'm',
        :meth:`signature`): the input's time layout and steps, whether the call starts a new
        sequence (or continues one, or must be refused), the step's counters; the inputs are
        tagged as per-step values."""
        self.step_mode = self.model_step_mode()
        fresh = [a.is_fresh(m) for m, a in zip(self.neurons, self.adapters)]
        tensors = tensors_in(args)
        if self.buffers is None:
            self.buffers = WeakIdKeyDictionary({b: True for b in self.root.buffers()})
        input_time, steps = self._input_layout(tensors, sig)
        _check_input(tensors)
        new = self._starts_sequence(fresh, tensors)
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

    def _input_layout(self, tensors: list, sig) -> tuple[Optional[tuple], int]:
        """(the time layout of the first input, the steps of this call): (None, 1) in step mode
        's'; in 'm' what the probe learnt for this signature (or is testing), else dim 0."""
        if self.step_mode != "m":
            return None, 1
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
        return input_time, steps

    def _starts_sequence(self, fresh: list, tensors: list) -> bool:
        """Whether this call starts a new sequence (every neuron reset, or a new input shape
        where the library starts over); refuses a call that can only continue a sequence SAF
        does not have (a copy made mid-sequence, an interrupted step, a state from the plain
        model, a partial reset, a new input shape without a reset)."""
        ran = [f for f, m in zip(fresh, self.neurons) if id(m) in self.ran]
        reset = self.restart or bool(fresh and all(fresh)) or bool(ran and all(ran))
        if self.copied_mid_sequence and not reset:
            raise SAFStateError(
                "this model is a copy (copy.deepcopy, torch.save/load) of a SAF model in the "
                "middle of a sequence; SAF's per-sequence state is not copied, so the copy "
                "cannot continue that sequence: reset it before running it "
                + reset_advice(self.neurons))
        self.copied_mid_sequence = False
        if self.interrupted and not reset:
            raise SAFStateError(
                "the previous step was interrupted (an exception inside forward), so the model's "
                f"state is half-updated; reset the model {reset_advice(self.neurons)} and start "
                "the sequence again")
        self.interrupted = False
        if not self.started and any(a.plain_state is not None and a.plain_state(m)
                                    for m, a in zip(self.neurons, self.adapters)):
            raise SAFStateError(
                "the model's neurons hold a state from a run before set_saf; SAF cannot continue "
                "a sequence the plain model started: reset the model first "
                + reset_advice(self.neurons))
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
        return new

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

    def site(self, name: str, args: tuple) -> Site:
        """The state of this linear map; a time loop inside forward is found here."""
        weight, numbers = None, []  # the first Parameter; the numbers (a factor read per step
        for a in args[1:]:          # must stay the same)
            if isinstance(a, (int, float)):
                numbers.append(a)
            elif weight is None and _is_param(a):
                weight = a
        key = (name, None if weight is None else id(weight), tuple(numbers))
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

    def watch_weights(self, site: Site, consts) -> None:
        """A linear map's parameters must not change within a sequence for SAF-E to follow the
        plain model: their versions (advanced by every in-place update: an optimizer step,
        ``load_state_dict``) are compared with the previous step's."""
        versions = tuple(c._version for c in consts if _is_param(c))
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


def _is_param(a) -> bool:
    """``isinstance(a, nn.Parameter)``, without the metaclass's Python ``__instancecheck__``
    for the usual answers (a Parameter, a number, None)."""
    t = type(a)
    if t is nn.Parameter:
        return True
    if t is int or t is float or t is bool or a is None:
        return False
    return isinstance(a, nn.Parameter)


def _check_input(tensors: list) -> None:
    """Refuse an input SAF cannot accumulate: nan or ±inf (on the CPU), or an empty one."""
    for x in tensors:  # accumulations of ±inf give inf − inf = nan: not the plain model
        if x.is_floating_point() and x.device.type == "cpu" and not bool(
                (x * 0 == 0).all()):  # (isfinite: x·0 is 0 exactly for finite x, nan else;
                                      # two operations fewer than torch.isfinite)
            raise ValueError(
                "the input holds nan or ±inf; SAF accumulates its input (â[t] = λ â[t−1] + "
                "x[t]), where a non-finite value never leaves and inf − inf gives nan, so "
                "SAF refuses it (on CUDA this is not checked: it would synchronise every "
                "step); clean the input, or run the plain model")
    if tensors and tensors[0].dim() > 0 and tensors[0].shape[0] == 0:
        raise ValueError("the input is empty (T = 0 time steps, or a batch of 0); SAF needs "
                         "at least one step")
