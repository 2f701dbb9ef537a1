"""The SAF classes that ``set_saf`` swaps in, made once per (kind, class) and findable by name,
so that a converted model pickles (``torch.save(net)``, ``copy.deepcopy``) and loads back
converted in a fresh process.

A class is named ``SAF_<hex of "kind:module:qualname">`` in this module; looking that name up
rebuilds it from the base class (``__getattr__`` below).
"""

from __future__ import annotations

import importlib

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


def __getattr__(name: str) -> type:
    if not name.startswith("SAF_"):
        raise AttributeError(name)
    kind, module, qualname = bytes.fromhex(name[4:]).decode().split(":")
    base = importlib.import_module(module)
    for part in qualname.split("."):
        base = getattr(base, part)
    from . import swap
    from .registry import load_adapters, lookup_class

    load_adapters()
    if kind == "root":
        return swap.root_class(base)
    if kind == "linear":
        return swap.linear_class(base)
    if kind == "per_step":
        return swap.per_step_class(base)
    spec = lookup_class(base)
    if kind == "method":
        return swap.method_class(base, spec.methods)
    return spec.neuron.saf_class(base)
