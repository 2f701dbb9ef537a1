"""What saf-plugin knows about module classes and libraries.

One :class:`Spec` per module class, looked up by MRO: the adapters register their classes here
(``adapters/torch_nn.py``, ``adapters/spikingjelly.py``, ``adapters/snntorch.py``), users with
the ``register_*`` functions of :mod:`saf_plugin.extend`. Only neurons, stateful modules,
containers and a few fixes (speed options) are known by class: every other module is judged by
the operations its forward runs (:mod:`saf_plugin.runtime`).

One :class:`~saf_plugin.contracts.LibraryAdapter` per library (:func:`register_library`); the
functions at the end (:func:`model_step_mode`, :func:`reset_model`, :func:`reset_advice`, ...)
ask every registered library, so that nothing outside ``saf_plugin/adapters/`` asks which
library a model comes from.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Optional

import torch
from torch import Tensor, nn

from . import contracts
from .contracts import Judgement, LibraryAdapter

Role = Literal["neuron", "linear", "nonlinear", "container", "stateful"]


@dataclass
class NeuronFunctions:
    """A :class:`~saf_plugin.contracts.NeuronAdapter` made of callables (what the adapters and
    ``register_neuron`` build); each field is documented there."""

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
    neuron: Optional[contracts.NeuronAdapter] = None
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


def load_adapters() -> None:
    """Import the adapters of the libraries the user has imported (never import them ourselves;
    torch.nn's is imported with the package)."""
    for lib, adapter in _ADAPTERS.items():
        if lib in sys.modules and adapter not in sys.modules:
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


# --------------------------------------------------------------------------- libraries

_LIBRARIES: dict[str, LibraryAdapter] = {}


def register_library(adapter: LibraryAdapter) -> None:
    """Register (or replace) the adapter of one library (its module does this at import)."""
    _LIBRARIES[adapter.name] = adapter


def libraries() -> list[LibraryAdapter]:
    """The adapters of the libraries the user has imported."""
    load_adapters()
    return list(_LIBRARIES.values())


def model_library(net: nn.Module) -> Optional[LibraryAdapter]:
    """The adapter of the first library that owns a module of ``net``, or None."""
    libs = libraries()
    return next((lib for m in net.modules() for lib in libs if lib.owns(m)), None)


def module_step_mode(module: nn.Module) -> Optional[str]:
    """The step mode its library gives ``module`` ("s" or "m"; a layer's too), or None."""
    return next((mode for mode in (lib.step_mode(module) for lib in libraries())
                 if mode is not None), None)


def model_step_mode(modules: Iterable[nn.Module]) -> str:
    """The step mode of the first of ``modules`` that is a library's stateful module (a neuron,
    a memory module) with a step mode ("s" or "m"); "s" when none has one."""
    libs = libraries()
    for m in modules:
        for lib in libs:
            if lib.owns(m):
                mode = lib.step_mode(m)
                if mode is not None:
                    return mode
    return "s"


def step_modes(modules: Iterable[nn.Module]) -> set[str]:
    """The step modes of ``modules`` ("s" for a module without one)."""
    return {module_step_mode(m) or "s" for m in modules}


def step_mode_advice(mode: str) -> str:
    """Code that switches a model to step mode ``mode`` ("'s'", "'s' or 'm'"), from the
    libraries that have step modes."""
    advice = [a for a in (lib.step_mode_advice(mode) for lib in libraries()) if a]
    return " or ".join(advice) if advice else f"step mode {mode}"


def reset_model(net: nn.Module) -> None:
    """Reset every neuron's state in ``net`` through its library's own mechanism."""
    for lib in libraries():
        lib.reset(net)


def reset_advice(modules: Iterable[nn.Module]) -> str:
    """How to reset a model made of ``modules``, as the engine's errors say it:
    "(spikingjelly: functional.reset_net(net))", naming the libraries those modules belong to
    (every library imported, when none does)."""
    modules = list(modules)
    libs = libraries()
    owners = [lib for lib in libs if any(lib.owns(m) for m in modules)] or libs
    if not owners:
        return "(each neuron's own reset)"
    return "(" + "; ".join(f"{lib.name}: {lib.reset_advice}" for lib in owners) + ")"


def state_stores(module: nn.Module) -> list[dict]:
    """The dictionaries, besides ``__dict__`` and the buffers, in which ``module`` keeps state
    tensors (:meth:`LibraryAdapter.state_stores`)."""
    return [d for lib in _LIBRARIES.values() for d in lib.state_stores(module)]


def keeps_state_in_buffers(module: nn.Module) -> bool:
    """Whether ``module`` is a neuron that keeps its state in buffers."""
    return any(lib.keeps_state_in_buffers(module) for lib in libraries())


def classes_changed(net: nn.Module) -> None:
    """Tell every library that module classes or modules of ``net`` changed."""
    for lib in _LIBRARIES.values():
        lib.classes_changed(net)


def __getattr__(name: str):
    if name == "NeuronAdapter":  # (the name of NeuronFunctions in models pickled by 0.1.0)
        return NeuronFunctions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
