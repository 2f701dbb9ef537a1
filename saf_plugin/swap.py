"""Switching a model to SAF in place and back: ``set_saf``.

Modules keep their identity: only ``__class__`` is swapped (to the classes of
:mod:`saf_plugin._classes`), for the neurons (to their adapter's SAF class) and for the model
itself (whose forward then runs under the engine, :mod:`saf_plugin.engine`). Everything is
validated first (:mod:`saf_plugin.validate`); SAF state lives in ``_saf_*`` attributes that
``set_saf(net, None)`` deletes again (:func:`saf_plugin.converted.revert`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import runtime
from ._classes import linear_class, method_class, per_step_class, root_class
from .converted import compiled_model, revert
from .errors import SAFIncompatibleError, SAFStateError
from .modes import Mode
from .registry import classes_changed, load_adapters, lookup
from .validate import findings, neurons

MODES = (Mode.E, Mode.F, None)


def set_saf(net: nn.Module, mode: Optional[str], *, accumulate: Optional[torch.dtype] = None,
            on_weight_change: str = "warn") -> nn.Module:
    """Switch ``net`` in place to SAF-E (``"E"``), SAF-F (``"F"``) or back (``None``).

    Everything is validated before anything changes: a neuron SAF cannot run raises
    :class:`SAFIncompatibleError` naming every offending module, and the model is left
    untouched. What only the data flow shows (e.g. a non-linear operation under SAF-F) is
    refused at the first call, before any output, and the model is switched back. Returns
    ``net``.

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
    _check_options(mode, accumulate, on_weight_change)
    mode = None if mode is None else Mode(mode)
    if compiled_model(net) is not None:  # torch.compile(net): switch the model it compiles (its
        set_saf(compiled_model(net), mode, accumulate=accumulate,  # forward then runs the engine
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
    bad = [f for f in findings(net, mode) if f.status != "exact"]
    if bad:
        raise SAFIncompatibleError(bad)
    revert(net)
    _apply(net, mode, accumulate, on_weight_change)
    return net


def _check_options(mode, accumulate, on_weight_change: str) -> None:
    """Refuse an unknown mode, accumulation dtype or ``on_weight_change``."""
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


def _apply(net: nn.Module, mode: str, accumulate=None, on_weight_change: str = "warn") -> None:
    found = neurons(net)
    rt = runtime.Runtime(net, mode, [m for _, m, _ in found],
                         [s.neuron for _, _, s in found], accumulate, on_weight_change)
    for path, module, spec in found:
        module.__class__ = spec.neuron.saf_class(type(module))
        module._saf_rt, module._saf_path, module._saf_spec = rt, path, spec
        spec.neuron.attach(module)
    inner = tuple(p + "." for p, _, _ in found)  # a neuron's children (surrogates) may be shared
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
    classes_changed(net)
