"""What SAF makes of a model, before it runs: ``check`` and ``fix``.

``check(net)`` judges the modules SAF must know by class: neurons (which route each takes)
and stateful modules it does not know (refused). Every other operation is judged from the
data flow when the model runs (``saf_plugin/runtime.py``): pass an example input to see, per
operation, whether it runs on accumulations (SAF's saving) or per step.
"""

from __future__ import annotations

import copy
from typing import Iterator, Optional

import torch
from torch import nn

from .errors import Finding, SAFStateError
from .registry import Spec, load_adapters, lookup
from .modes import Mode


def walk(net: nn.Module) -> Iterator[tuple[str, nn.Module, Optional[Spec]]]:
    """Yield (path, module, spec) for every neuron, stateful module and leaf module.

    Children of neurons (e.g. surrogate functions) are not visited.
    """
    skip: list[str] = []
    for path, module in net.named_modules():
        if any(path.startswith(p + ".") for p in skip):
            continue
        spec = lookup(module)
        if spec is not None and spec.role in ("neuron", "stateful"):
            skip.append(path)
            yield path, module, spec
        elif next(module.children(), None) is None or (
                spec is not None and spec.role == "container" and spec.judge is not None):
            yield path, module, spec


def judge(path: str, module: nn.Module, spec: Optional[Spec],
          mode: str = Mode.E) -> Optional[Finding]:
    """The finding for one module, or None where only its operations matter."""
    name = getattr(type(module), "_saf_base", type(module)).__name__
    if spec is None or spec.judge is None:
        return None
    status, reason, fix_hint = spec.judge(module)
    if (mode == Mode.F and status == "exact" and spec.neuron is not None
            and spec.neuron.route(module) == "per step"):
        status, fix_hint = "unsupported", (
            "train it with SAF-E; or saf_plugin.fix(net, soft_reset=True) where a soft reset "
            "gives it the closed form (this changes the model)")
        reason = (f"SAF-F needs the closed form (the spike representation of a soft-reset "
                  f"LIF/IF neuron); this neuron runs {reason}")
    return Finding(path, name, status, reason, fix_hint)


def check(net: nn.Module, example_input=None, *, mode: str = Mode.E) -> list[Finding]:
    """One :class:`Finding` per neuron and per module SAF refuses; with ``example_input``
    (what ``net`` is called with), also one per operation of the forward, saying whether it
    runs on accumulations or per step (found by running a copy of the model under SAF).

    Never raises on a model it can walk. ``status`` is "exact" or "unsupported".
    """
    load_adapters()
    findings = [f for f in (judge(p, m, s, mode) for p, m, s in walk(net)) if f is not None]
    neurons = [(p, m) for p, m, s in walk(net) if s is not None and s.role == "neuron"]
    if not neurons:
        findings.append(Finding("", type(net).__name__, "unsupported",
                                "the model has no spiking neuron saf-plugin knows",
                                "SAF needs LIF/IF neurons (SpikingJelly or snnTorch)"))
    modes = {getattr(m, "step_mode", "s") for _, m in neurons}
    if len(modes) > 1:
        findings.append(Finding("", type(net).__name__, "unsupported",
                                "neurons mix step modes 's' and 'm'",
                                "use functional.set_step_mode(net, 's' or 'm') first"))
    if example_input is not None and not any(f.status != "exact" for f in findings):
        findings += _operations(net, example_input, mode)
    return findings


def _operations(net: nn.Module, example_input, mode: str) -> list[Finding]:
    from .errors import SAFError
    from .swap import set_saf

    from .training import reset_state

    probe = _copy(net)
    reset_state(probe)
    set_saf(probe, mode)
    rt = probe.__dict__["_saf_rt"]
    rt.record = []
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    try:
        with torch.no_grad():
            probe(*args)
    except SAFError as e:
        return [f for f in getattr(e, "findings", [])] or [
            Finding("", type(net).__name__, "unsupported", str(e), "")]
    seen, out = set(), []
    for where, op, route in rt.record:
        if (where, op) in seen:
            continue
        seen.add((where, op))
        reason = {
            "on accumulations": "runs once per step on accumulations (SAF's saving)",
            "on per-step values": "a linear map without parameters on per-step values: runs "
                                  "once per step on the real values (no trace needed)",
        }.get(route, "not linear in the accumulations, or across time: runs per step on the "
                     "real values (exact; element-wise extra work)")
        out.append(Finding(where, op, "exact", reason, ""))
    return out


def _copy(net: nn.Module) -> nn.Module:
    """A deep copy of ``net``, also right after a plain forward with autograd (whose state
    tensors carry a graph, which deepcopy refuses): those are copied detached."""
    memo = {}
    for m in net.modules():
        for d in (m.__dict__, m._buffers, m.__dict__.get("_memories") or {}):
            for v in d.values():
                if torch.is_tensor(v) and v.grad_fn is not None:
                    memo[id(v)] = v.detach().clone()
    return copy.deepcopy(net, memo)


def fix(net: nn.Module, *, soft_reset: bool = False) -> list[Finding]:
    """Speed options that change the model, in place; one finding per change.

    MaxPool -> AvgPool (a new module: hooks on the old one are gone; average pooling is
    linear, so it runs once on accumulations instead of per step), and with ``soft_reset``
    hard reset -> soft reset (the same neuron object: the closed form instead of the per-step
    route, and what SAF-F needs). SAF runs every neuron and operation exactly without fix();
    after it, retrain or fine-tune. Parameters are untouched, so an optimizer built before
    keeps working.
    """
    from .swap import invalidate_reset_cache, saf_mode

    load_adapters()
    if saf_mode(net) is not None or any(m.__dict__.get("_saf_rt") for m in net.modules()):
        raise SAFStateError("fix() changes modules of a model that is switched to SAF: call "
                            "set_saf(model, None) on the model first")
    changes: list[Finding] = []
    replacements: list[tuple[str, nn.Module]] = []
    for path, module, spec in list(walk(net)):
        name = type(module).__name__
        if spec is None:
            continue
        if spec.role == "neuron" and spec.neuron is not None and spec.neuron.fix is not None:
            if soft_reset and spec.neuron.route(module) == "per step":
                note = spec.neuron.fix(module)
                if note:
                    changes.append(Finding(path, name, "exact", note, ""))
        elif spec.fix is not None:
            new, note = spec.fix(module)
            if new is not None:
                new.train(module.training)
                replacements.append((path, new))
            changes.append(Finding(path, name, "exact" if new is not None else "unsupported",
                                   note, ""))
    for path, new in replacements:
        parent_path, _, child = path.rpartition(".")
        parent = net.get_submodule(parent_path) if parent_path else net
        setattr(parent, child, new)
    invalidate_reset_cache(net)
    return changes
