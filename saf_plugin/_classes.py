"""The SAF classes that ``set_saf`` swaps in: made once per (kind, class), findable by name, so
that a converted model pickles (``torch.save(net)``, ``copy.deepcopy``) and loads back
converted in a fresh process.

A class is named ``SAF_<hex of "kind:module:qualname">`` in this module; looking that name up
rebuilds it from the base class (``__getattr__`` below). The factories of the kinds that are
not a library's neurons live here too: the model itself (:func:`root_class`), a module
declared with ``register_linear`` or ``register_per_step`` (:func:`linear_class`,
:func:`per_step_class`), a module with extra methods (:func:`method_class`). A neuron's class
comes from its adapter (``NeuronAdapter.saf_class``), which calls :func:`make`.
"""

from __future__ import annotations

import copy
import importlib

from . import engine
from .converted import graph_free_memo
from .registry import load_adapters, lookup_class

_MADE: dict[tuple, type] = {}


def make(kind: str, base: type, attrs: dict) -> type:
    """The SAF subclass of ``base`` of this ``kind`` ("root", "linear", "per_step", "method", "neuron"),
    with ``attrs`` as its class dict (made once)."""
    key = (kind, base)
    if key not in _MADE:
        name = "SAF_" + f"{kind}:{base.__module__}:{base.__qualname__}".encode().hex()
        cls = type(f"SAF{base.__name__}", (base,), {
            "_saf_base": base, "__module__": __name__, "__qualname__": name,
            "__doc__": f"{base.__name__} under SAF (class swapped in place by saf_plugin.set_saf).",
            **attrs})
        _MADE[key] = cls
    return _MADE[key]


def root_class(cls: type) -> type:
    """The model itself: its forward runs under the engine; a deep copy copies the state a
    step left with its autograd graph (a membrane, a neuron's per-step state) detached."""
    def forward(self, *args, **kwargs):
        return engine.entry()(self._saf_rt, self, cls.forward, args, kwargs)

    return make("root", cls, {"forward": forward, "__deepcopy__": _deepcopy})


def _deepcopy(self, memo):
    graph_free_memo(self, memo)
    return copy._reconstruct(self, memo, *self.__reduce_ex__(4))


def method_class(cls: type, methods: dict) -> type:
    """A subclass carrying a spec's extra methods (e.g. a weight cache valid under SAF)."""
    return make("method", cls, dict(methods))


def linear_class(cls: type) -> type:
    """A module declared with register_linear: its forward runs once on accumulations."""
    def forward(self, *args, **kwargs):
        return self._saf_rt.user_linear(self, cls.forward, args, kwargs)

    return make("linear", cls, {"forward": forward})


def per_step_class(cls: type) -> type:
    """A module declared with register_per_step: its forward runs once per step, as a whole."""
    def forward(self, *args, **kwargs):
        return self._saf_rt.user_per_step(self, cls.forward, args, kwargs)

    return make("per_step", cls, {"forward": forward})


def __getattr__(name: str) -> type:
    if not name.startswith("SAF_"):
        raise AttributeError(name)
    kind, module, qualname = bytes.fromhex(name[4:]).decode().split(":")
    base = importlib.import_module(module)
    for part in qualname.split("."):
        base = getattr(base, part)
    load_adapters()
    if kind == "root":
        return root_class(base)
    if kind == "linear":
        return linear_class(base)
    if kind == "per_step":
        return per_step_class(base)
    spec = lookup_class(base)
    if kind == "method":
        return method_class(base, spec.methods)
    return spec.neuron.saf_class(base)
