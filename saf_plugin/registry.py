"""What saf-plugin knows about module classes: one :class:`Spec` per class, looked up by MRO.

Adapters register their classes here (``adapters/torch_nn.py``, ``adapters/spikingjelly.py``,
``adapters/snntorch.py``); users extend it with :func:`register_linear`. Only neurons, stateful
modules, containers and a few fixes (speed options) are known by class: every other module is judged by the
operations its forward runs (``saf_plugin/runtime.py``).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import torch
from torch import Tensor, nn

from .errors import Status

Role = Literal["neuron", "linear", "nonlinear", "container", "stateful"]
Judgement = tuple[Status, str, str]  # status, reason, fix


@dataclass
class NeuronAdapter:
    """How one family of neuron classes becomes a SAF neuron and back.

    ``saf_class(cls)`` gives the SAF subclass of ``cls``; ``attach(m)`` / ``detach(m)`` add and
    remove the SAF state after the class swap; ``decay(m)`` returns λ (float, or a tensor with
    grad for a learnable decay); ``is_fresh(m)`` says whether the neuron is in its reset state;
    ``closed_form(m)`` whether it runs SAF's closed form (else the per-step route of
    :mod:`saf_plugin.neuron_step`; None: always the closed form); ``fix(m)`` switches it to the
    closed form where it can (a soft reset).
    """

    saf_class: Callable[[type], type]
    attach: Callable[[nn.Module], None]
    detach: Callable[[nn.Module], None]
    decay: Callable[[nn.Module], object]
    is_fresh: Callable[[nn.Module], bool]
    fix: Optional[Callable[[nn.Module], str]] = None
    reset_on_shape_change: bool = False
    plain_state: Optional[Callable[[nn.Module], bool]] = None  # holds state from a plain run
    closed_form: Optional[Callable[[nn.Module], bool]] = None
    params: Optional[Callable[[nn.Module], object]] = None  # closed form: NeuronParams
    state: tuple[str, ...] = ()  # a plain module's state attributes (register_neuron)
    decay_value: Optional[Callable[[nn.Module], float]] = None  # λ as a float, cached (core.host_float)

    def lam(self, m: nn.Module) -> float:
        """λ of ``m`` as a Python float."""
        if self.decay_value is not None:
            return self.decay_value(m)
        lam = self.decay(m)
        return float(lam.detach()) if torch.is_tensor(lam) else float(lam)

    def route(self, m: nn.Module) -> str:
        """"closed form" or "per step"."""
        return "closed form" if self.closed_form is None or self.closed_form(m) else "per step"


@dataclass
class Spec:
    """What a module class is to SAF.

    role:     "neuron", "linear" (a linear or affine map: exact), "nonlinear" (not exact;
              ``judge`` says approximate or unsupported), "container" (only its children count),
              "stateful" (a catch-all for a library's neuron/state base class: reported as one
              module, its children not walked).
    judge:    module -> (status, reason, fix); None means "exact".
    shift:    for a module declared with :func:`register_linear` that adds a constant:
              (module, out, sample_ndim) -> β, broadcastable against one sample's output.
    whole:    the module's whole forward runs as one operation instead of being judged by its
              operations: on accumulations (role "linear", :func:`register_linear`) or per
              step (role "nonlinear", ``register_per_step``).
    fix:      ``saf_plugin.fix``'s speed option for this module: module -> (replacement or
              None, note) (MaxPool -> AvgPool).
    dynamics: method names whose overriding in a subclass changes the maths (subclasses that
              override them are not covered by this spec).
    methods:  extra methods of the module's SAF class (e.g. a cache that is only valid because
              SAF runs the layer on constant weights within a sequence).
    applies:  module -> bool: whether the spec covers this instance (None: every instance of
              the class); where it does not, the search goes on up the MRO.
    """

    role: Role
    judge: Optional[Callable[[nn.Module], Judgement]] = None
    shift: Optional[Callable[[nn.Module, Tensor, int], Optional[Tensor]]] = None
    whole: bool = False
    neuron: Optional[NeuronAdapter] = None
    fix: Optional[Callable[[nn.Module], tuple[Optional[nn.Module], str]]] = None
    dynamics: tuple[str, ...] = ("forward",)
    methods: dict[str, Callable] = field(default_factory=dict)
    applies: Optional[Callable[[nn.Module], bool]] = None


_REGISTRY: dict[type, Spec] = {}
_ADAPTERS = {
    "spikingjelly": "saf_plugin.adapters.spikingjelly",
    "snntorch": "saf_plugin.adapters.snntorch",
}


def register(cls: type, spec: Spec) -> None:
    """Register (or replace) the spec of ``cls``; subclasses inherit it unless they override
    one of ``spec.dynamics``."""
    _REGISTRY[cls] = spec


def register_linear(
    cls: type, shift: Optional[Callable[[nn.Module, Tensor, int], Optional[Tensor]]] = None
) -> None:
    """Declare ``cls`` a linear map, so that its forward runs once per step on accumulations.

    Without this a module is judged by the operations its forward runs, which is always exact
    (an operation SAF does not know runs per step); declaring it saves that per-step work when
    the module calls something SAF cannot see into (e.g. a custom autograd function). If it
    adds a constant, pass ``shift(module, out, sample_ndim)`` returning that constant
    broadcastable against one sample's output (``sample_ndim`` dims); SAF scales it by c[t].
    """
    register(cls, Spec("linear", shift=shift, whole=True))


def load_adapters() -> None:
    """Import the adapters of the libraries the user has imported (never import them ourselves;
    torch.nn's is imported with the package)."""
    for lib, adapter in _ADAPTERS.items():
        if lib in sys.modules:
            importlib.import_module(adapter)


def lookup_class(cls: type, module: Optional[nn.Module] = None) -> Optional[Spec]:
    """The spec of ``cls`` (see :func:`lookup`)."""
    load_adapters()
    cls = getattr(cls, "_saf_base", cls)
    for klass in cls.__mro__:
        spec = _REGISTRY.get(klass)
        if spec is None:
            continue
        if module is not None and spec.applies is not None and not spec.applies(module):
            continue
        if all(getattr(cls, n, None) is getattr(klass, n, None) for n in spec.dynamics):
            return spec
    return None


_LIKE: list[Callable[[nn.Module], Optional[Spec]]] = []  # specs found by what a module has


def register_like(rule: Callable[[nn.Module], Optional[Spec]]) -> None:
    """Add a rule that gives the spec of a module no registered class covers, from what the
    module has (a library's memory module copied into another code base, which keeps its
    interface but not its class)."""
    _LIKE.append(rule)


def lookup(module: nn.Module) -> Optional[Spec]:
    """The spec of the nearest registered class in ``type(module).__mro__``, else of the first
    :func:`register_like` rule that recognises the module, or None.

    A subclass that overrides one of a spec's ``dynamics`` methods is not covered by it; the
    search goes on up the MRO (to a library's catch-all base class, if registered).
    """
    spec = lookup_class(type(module), module)
    if spec is None:
        spec = next((s for s in (rule(module) for rule in _LIKE) if s is not None), None)
    return spec
