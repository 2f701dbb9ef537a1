"""What SAF makes of a model's modules without running it: :func:`walk`, :func:`judge` and
:func:`findings`, which ``set_saf`` checks before it changes anything and ``check`` reports.

Only the modules SAF must know by class are judged here: neurons (which route each takes) and
stateful modules it does not know (refused). Every other operation is judged from the data flow
when the model runs (:mod:`saf_plugin.runtime`; ``check(net, example_input)``).
"""

from __future__ import annotations

from typing import Iterator, Optional

from torch import nn

from .errors import Finding
from .modes import Mode
from .registry import Spec, load_adapters, lookup, step_mode_advice, step_modes


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


def neurons(net: nn.Module) -> list[tuple[str, nn.Module, Spec]]:
    """(path, module, spec) of every neuron of ``net``."""
    return [(p, m, s) for p, m, s in walk(net) if s is not None and s.role == "neuron"]


def findings(net: nn.Module, mode: str = Mode.E) -> list[Finding]:
    """One :class:`Finding` per neuron and per module SAF refuses, and one for a model without
    neurons or with neurons of mixed step modes."""
    load_adapters()
    out = [f for f in (judge(p, m, s, mode) for p, m, s in walk(net)) if f is not None]
    found = [m for _, m, _ in neurons(net)]
    if not found:
        out.append(Finding("", type(net).__name__, "unsupported",
                           "the model has no spiking neuron saf-plugin knows",
                           "SAF needs LIF/IF neurons (SpikingJelly or snnTorch)"))
    if len(step_modes(found)) > 1:
        advice = step_mode_advice("'s' or 'm'")
        out.append(Finding("", type(net).__name__, "unsupported",
                           "neurons mix step modes 's' and 'm'", f"use {advice} first"))
    return out
