"""What SAF makes of a model, for the user: ``check`` and ``fix``.

``check(net)`` judges the modules SAF must know by class (:mod:`saf_plugin.validate`): neurons
(which route each takes) and stateful modules it does not know (refused). Every other operation
is judged from the data flow when the model runs: ``check(net, example_input)`` runs a copy of
the model under SAF (``set_saf``) and reports, per operation, whether it runs on accumulations
(SAF's saving) or per step.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .converted import detached_copy, saf_mode
from .errors import Finding, SAFError, SAFStateError
from .modes import Mode
from .registry import classes_changed, load_adapters, reset_model
from .swap import set_saf
from .validate import findings, walk

_ROUTES = {
    "on accumulations": "runs once per step on accumulations (SAF's saving)",
    "on per-step values": "a linear map without parameters on per-step values: runs once per "
                          "step on the real values (no trace needed)",
}
_PER_STEP = ("runs per step on the real values (exact; element-wise extra work): not linear in "
             "the accumulations, across time, or fed per-step values")


class Findings(list):
    """A list of :class:`Finding` that prints as a table: ``print(check(net, x))`` shows each
    neuron's route and, in the order of one call, each operation's (what ``saf check``
    prints)."""

    def __str__(self) -> str:
        rows = [("path", "module", "status", "reason", "fix")]
        rows += [(_where(f.path), f.module, f.status, f.reason, f.fix or "") for f in self]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = []
        for i, r in enumerate(rows):
            head = "  ".join(r[k].ljust(widths[k]) for k in range(3))
            tail = r[3] + (f" | fix: {r[4]}" if r[4] and i else (" | fix" if i == 0 else ""))
            lines.append(f"{head}  {tail}")
            if i == 0:
                lines.append("-" * min(100, len(lines[0]) + 10))
        return "\n".join(lines)


def _where(path: str) -> str:
    """A finding's path; an operation's source file without its site-packages prefix."""
    return re.sub(r"^\S*/(site|dist)-packages/", "", path) or "<root>"


def check(net: nn.Module, example_input=None, *, mode: str = Mode.E) -> Findings:
    """One :class:`Finding` per neuron and per module SAF refuses; with ``example_input``
    (what ``net`` is called with), also one per operation of the forward, saying whether it
    runs on accumulations or per step (found by running a copy of the model under SAF).

    Never raises on a model it can walk. ``status`` is "exact" or "unsupported". The list
    prints as a table: ``print(check(net, x))`` shows the model's plan under SAF.
    """
    found = Findings(findings(net, mode))
    if example_input is not None and not any(f.status != "exact" for f in found):
        found += _operations(net, example_input, mode)
    return found


def _operations(net: nn.Module, example_input, mode: str) -> list[Finding]:
    """One finding per operation of one call of a copy of ``net`` under SAF."""
    probe = detached_copy(net)
    reset_model(probe)
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
    for where, op, route in rt.record:  # one row per line, operation and route: a line
        if (where, op, route) in seen:  # with two means (of space, then time) has two rows
            continue
        seen.add((where, op, route))
        out.append(Finding(where, op, "exact", _ROUTES.get(route, _PER_STEP), ""))
    return out


def fix(net: nn.Module, *, soft_reset: bool = False) -> list[Finding]:
    """Speed options that change the model, in place; one finding per change.

    MaxPool -> AvgPool (a new module: hooks on the old one are gone; average pooling is
    linear, so it runs once on accumulations instead of per step), and with ``soft_reset``
    hard reset -> soft reset (the same neuron object: the closed form instead of the per-step
    route, and what SAF-F needs). SAF runs every neuron and operation exactly without fix();
    after it, retrain or fine-tune. Parameters are untouched, so an optimizer built before
    keeps working.
    """
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
    classes_changed(net)
    return changes
