"""Switching a model to SAF in place and back: ``set_saf``, ``saf_mode``.

Modules keep their identity: only ``__class__`` is swapped, for the neurons (to their SAF
class, :mod:`saf_plugin.neuron_step`) and for the model itself (whose forward then runs under
the engine of :mod:`saf_plugin.runtime`). SAF state lives in attributes that
``set_saf(net, None)`` deletes again.
"""

from __future__ import annotations

import copy
import sys
from typing import Optional

import torch
from torch import nn

from . import _classes, engine, runtime
from .check import check, walk
from .errors import SAFIncompatibleError, SAFStateError
from .modes import Mode
from .registry import load_adapters, lookup

MODES = (Mode.E, Mode.F, None)


def saf_mode(net: nn.Module) -> Optional[str]:
    """"E", "F" or None (the ordinary spiking model). A ``DistributedDataParallel`` wrapper
    reports the mode of the model it wraps (``ddp.module``)."""
    rt = net.__dict__.get("_saf_rt")
    if rt is None and isinstance(net, nn.parallel.DistributedDataParallel):
        return saf_mode(net.module)
    if rt is None and _compiled(net) is not None:
        return saf_mode(_compiled(net))
    return None if rt is None or rt.root is not net else rt.mode


def _compiled(net: nn.Module) -> Optional[nn.Module]:
    """The model a ``torch.compile`` wrapper (``OptimizedModule``) compiles, else None."""
    inner = net.__dict__.get("_modules", {}).get("_orig_mod")
    return inner if inner is not None and type(net).__name__ == "OptimizedModule" else None


def invalidate_reset_cache(net: nn.Module) -> None:
    fn = getattr(sys.modules.get("spikingjelly.activation_based.functional"),
                 "invalidate_reset_cache", None)
    if fn is not None:
        fn(net)


def root_class(cls: type) -> type:
    """The model itself: its forward runs under the engine; a deep copy copies the state a
    step left with its autograd graph (a membrane, a neuron's per-step state) detached."""
    def forward(self, *args, **kwargs):
        return engine.entry()(self._saf_rt, self, cls.forward, args, kwargs)

    return _classes.make("root", cls, {"forward": forward, "__deepcopy__": _deepcopy})


def _deepcopy(self, memo):
    for m in self.modules():
        for d in (m.__dict__, m._buffers, m.__dict__.get("_memories") or {}):
            for v in d.values():
                if torch.is_tensor(v) and v.grad_fn is not None and id(v) not in memo:
                    memo[id(v)] = v.detach().clone()
    return copy._reconstruct(self, memo, *self.__reduce_ex__(4))


def method_class(cls: type, methods: dict) -> type:
    """A subclass carrying a spec's extra methods (e.g. a weight cache valid under SAF)."""
    return _classes.make("method", cls, dict(methods))


def linear_class(cls: type) -> type:
    """A module declared with register_linear: its forward runs once on accumulations."""
    def forward(self, *args, **kwargs):
        return self._saf_rt.user_linear(self, cls.forward, args, kwargs)

    return _classes.make("linear", cls, {"forward": forward})


def per_step_class(cls: type) -> type:
    """A module declared with register_per_step: its forward runs once per step, as a whole."""
    def forward(self, *args, **kwargs):
        return self._saf_rt.user_per_step(self, cls.forward, args, kwargs)

    return _classes.make("per_step", cls, {"forward": forward})


def set_saf(net: nn.Module, mode: Optional[str], *, accumulate: Optional[torch.dtype] = None,
            on_weight_change: str = "warn", strict: bool = True) -> nn.Module:
    """Switch ``net`` in place to SAF-E (``"E"``), SAF-F (``"F"``) or back (``None``).

    Everything is validated before anything changes: a neuron SAF cannot run raises
    :class:`SAFIncompatibleError` naming every offending module, and the model is left
    untouched. What only the data flow shows (e.g. a non-linear operation under SAF-F) is
    refused at the first call, before any output, and the model is switched back. Returns
    ``net``. ``strict`` has no effect (nothing SAF runs is approximate).

    ``on_weight_change``: what to do when a weight of a linear map changes in the middle of a
    sequence (an optimizer step at every time step, ``load_state_dict``). SAF-E then computes
    Y[t] = W_new â[t]: the accumulation of all past spikes meets the current weights, where
    the plain model's past steps keep the weights they met (the forwards drift apart slightly;
    docs/theory.md, "Weights that change within a sequence"). ``"warn"`` (default): once per
    model, a :class:`WeightChangeWarning`; ``"accept"``: SAF-E's semantics, silently (what
    ``train_step(..., online=True)`` uses); ``"raise"``: :class:`SAFStateError`.

    ``accumulate``: ``None`` (the default: accumulations in the dtype of the values) or
    ``torch.float64``: SAF's accumulations â[t] = λ â[t−1] + s[t], the layer inputs
    Y[t] = W â_in[t] + b c[t] and the neurons' closed form run in float64 while the model stays
    in its dtype (each linear map on accumulations casts its weights per call, so gradients
    reach the model's parameters; spikes, membranes, per-step operations and outputs keep the
    model's dtype). The accumulations grow like 1/(1−λ), like t for IF neurons, and in float32
    a rounding flip at a threshold changes a spike after about a thousand steps; float64
    follows the plain float32 model much longer (docs/faq.md, "Mixed precision? Long
    sequences?"). Costs float64 arithmetic in the linear maps (slow on most GPUs). Kept with
    the model's SAF state (``copy.deepcopy``, ``torch.save``).
    """
    if mode not in MODES:
        raise ValueError(f"unknown SAF mode {mode!r}; valid modes are 'E', 'F' and None")
    if accumulate is not None and (accumulate is not torch.float64 or mode is None):
        raise ValueError(
            f"accumulate={accumulate!r} is not supported" + (
                " with mode None (the plain model has no accumulations)" if mode is None else "")
            + "; valid: accumulate=None (accumulations in the model's dtype) or "
            "accumulate=torch.float64 with mode 'E' or 'F'")
    if on_weight_change not in ("warn", "accept", "raise"):
        raise ValueError(f"on_weight_change={on_weight_change!r}; valid: 'warn', 'accept', "
                         "'raise'")
    mode = None if mode is None else Mode(mode)
    if _compiled(net) is not None:  # torch.compile(net): switch the model it compiles (its
        set_saf(_compiled(net), mode, accumulate=accumulate,  # forward then runs the engine
                on_weight_change=on_weight_change)            # eagerly)
        return net
    load_adapters()
    own = net.__dict__.get("_saf_rt")
    foreign = next((p for p, m in net.named_modules()
                    if m.__dict__.get("_saf_rt") not in (None, own)), None)
    if foreign is not None or (own is not None and own.root is not net):
        raise SAFStateError(
            f"{foreign or '<root>'} is already switched to SAF by set_saf on another module "
            "(a submodule or an enclosing model); call set_saf(that_module, None) first")
    if mode is None:
        revert(net)
        return net
    spec = lookup(net)
    if spec is not None and spec.role == "neuron":
        raise SAFIncompatibleError([], header=(
            f"set_saf needs a model that contains neurons, not a bare {type(net).__name__}: "
            "wrap it, e.g. nn.Sequential(layer, neuron), and convert that"))
    bad = [f for f in check(net, mode=mode) if f.status != "exact"]
    if bad:
        raise SAFIncompatibleError(bad)
    revert(net)
    _apply(net, mode, accumulate, on_weight_change)
    return net


def _apply(net: nn.Module, mode: str, accumulate=None, on_weight_change: str = "warn") -> None:
    neurons = [(p, m, s) for p, m, s in walk(net) if s is not None and s.role == "neuron"]
    rt = runtime.Runtime(net, mode, [m for _, m, _ in neurons],
                         [s.neuron for _, _, s in neurons], accumulate, on_weight_change)
    for path, module, spec in neurons:
        module.__class__ = spec.neuron.saf_class(type(module))
        module._saf_rt, module._saf_path, module._saf_spec = rt, path, spec
        spec.neuron.attach(module)
    inner = tuple(p + "." for p, _, _ in neurons)  # a neuron's children (surrogates) may be shared
    for path, module in net.named_modules():
        if path.startswith(inner):
            continue
        spec = lookup(module)
        if spec is not None and spec.whole and module is not net:
            make = linear_class if spec.role == "linear" else per_step_class
            module.__class__ = make(type(module))
            module._saf_spec = spec
        elif spec is not None and spec.methods and module.__dict__.get("_saf_rt") is None:
            module.__class__ = method_class(type(module), spec.methods)
        module._saf_rt, module._saf_path = rt, path  # marks every module as part of this model
    net.__class__ = root_class(type(net))
    net._saf_rt = rt
    net._saf_path = ""
    invalidate_reset_cache(net)


def revert(net: nn.Module) -> None:
    """Undo ``_apply``: every class back, every SAF attribute gone."""
    rt = net.__dict__.get("_saf_rt")
    if rt is None:
        return
    for module in net.modules():
        if module.__dict__.get("_saf_rt") is not rt:
            continue
        spec = module.__dict__.get("_saf_spec")
        if spec is not None and spec.role == "neuron":
            spec.neuron.detach(module)
        base = getattr(type(module), "_saf_base", None)
        if base is not None:
            module.__class__ = base
        for name in [n for n in module.__dict__ if n.startswith("_saf_")]:
            del module.__dict__[name]
    invalidate_reset_cache(net)
