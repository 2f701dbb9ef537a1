"""What ``set_saf`` leaves on a converted model, read and undone: :func:`saf_mode`,
:func:`revert`, and copies of a model whose state carries an autograd graph.

A converted model is its own modules with their classes swapped (:mod:`saf_plugin._classes`)
and a few ``_saf_*`` attributes: ``_saf_rt`` (the model's runtime, on every module of the
model), ``_saf_path`` (the module's path), ``_saf_spec`` (its registry entry). This module only
reads and removes them; making them is :mod:`saf_plugin.swap`'s.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from . import registry


def saf_mode(net: nn.Module) -> Optional[str]:
    """"E", "F" or None (the ordinary spiking model). A ``DistributedDataParallel`` wrapper
    reports the mode of the model it wraps (``ddp.module``)."""
    rt = net.__dict__.get("_saf_rt")
    if rt is None and isinstance(net, nn.parallel.DistributedDataParallel):
        return saf_mode(net.module)
    if rt is None and compiled_model(net) is not None:
        return saf_mode(compiled_model(net))
    return None if rt is None or rt.root is not net else rt.mode


def compiled_model(net: nn.Module) -> Optional[nn.Module]:
    """The model a ``torch.compile`` wrapper (``OptimizedModule``) compiles, else None."""
    inner = net.__dict__.get("_modules", {}).get("_orig_mod")
    return inner if inner is not None and type(net).__name__ == "OptimizedModule" else None


def revert(net: nn.Module) -> None:
    """Undo ``set_saf``: every class back, every SAF attribute gone (nothing if ``net`` is
    not converted)."""
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
    registry.classes_changed(net)


def graph_free_memo(net: nn.Module, memo: dict) -> dict:
    """Fill a ``copy.deepcopy`` memo so that the state tensors of ``net``'s modules that carry
    an autograd graph (a membrane after a forward with autograd, which deepcopy refuses) are
    copied detached. Returns ``memo``."""
    for m in net.modules():
        for store in (m.__dict__, m._buffers, *registry.state_stores(m)):
            for v in store.values():
                if torch.is_tensor(v) and v.grad_fn is not None and id(v) not in memo:
                    memo[id(v)] = v.detach().clone()
    return memo


def detached_copy(net: nn.Module) -> nn.Module:
    """A deep copy of ``net``, also right after a forward with autograd (its state tensors
    are copied detached)."""
    return copy.deepcopy(net, graph_free_memo(net, {}))
