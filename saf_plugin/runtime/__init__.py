"""The SAF runtime: one forward of a converted model, read from its data flow.

While a converted model runs (:mod:`saf_plugin.engine`), a
:class:`torch.overrides.TorchFunctionMode` sees every tensor operation of its forward (module
internals, functional calls, tensor methods, ``*``, ``@``, indexing) and hands it to
:meth:`Runtime.dispatch`, which routes it by what the tensors are (:mod:`saf_plugin.dataflow`):
linear maps once per step on accumulations, shape operations on the value, everything else per
step on the real values. Neurons take their input current from the runtime and hand back their
real spikes tagged with their accumulation. See docs/theory.md and docs/architecture.md.

:class:`Runtime` is one object per converted model, made of parts that each own one concern:

- :mod:`.steps`: calls, steps and sequences, and the sites of the linear maps (per-sequence
  state);
- :mod:`.values`: accumulate, de-accumulate, the bias series, the accumulation dtype;
- :mod:`.neuron_io`: the neurons' inputs, outputs and slots, and the model's output;
- :mod:`.routes`: the route table (:data:`~.routes.ROUTES`) and the dispatch of an operation;
- :mod:`.shape_routes`, :mod:`.step_routes`, :mod:`.linear_routes`: the routes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from ..dataflow import Site, Tags
from ..engine import no_checkpoint
from ..registry import model_step_mode
from .linear_routes import LinearRoutes
from .neuron_io import NeuronIO
from .routes import ROUTES, Dispatch
from .shape_routes import ShapeRoutes
from .step_routes import StepRoutes
from .steps import Steps
from .values import Values

__all__ = ["Runtime", "Learned", "ROUTES"]


@dataclass
class Learned:
    """What a probe (:func:`saf_plugin.engine._probe`) learnt of one call signature in step
    mode 'm': the input's time layout (None: the input has no time axis SAF can use), the steps
    T of a call, the neuron (its path) each linear site feeds, by site index, and whether the
    guessed input time reached every neuron fed from the input as its time axis."""

    input_time: Optional[tuple]
    steps: int
    receivers: dict
    confirmed: bool


class Runtime(Steps, Values, NeuronIO, Dispatch, ShapeRoutes, StepRoutes, LinearRoutes):
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

    no_checkpoint = staticmethod(no_checkpoint)  # (every routed operation and neuron step)
