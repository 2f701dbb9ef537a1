"""The route table and the dispatch of every operation of a converted model's forward.

:data:`ROUTES` maps an operation's name to its route, a method of the runtime
``route(self, func, name, args, kwargs)``, filled by the :func:`route` decorator next to each
route (:mod:`.shape_routes`, :mod:`.step_routes`, :mod:`.linear_routes`); a name has one route
(a second registration is refused). A route returns the operation's result, or
:data:`PER_STEP` where it does not apply to these arguments: the operation then runs per step
(:meth:`~saf_plugin.runtime.step_routes.StepRoutes._per_step`), which is exact for any
operation. An in-place operation without a route runs out of place and is copied back.
Refusals (what SAF cannot run exactly) are raised as :class:`saf_plugin.dataflow.Refusal`,
which carries its :class:`~saf_plugin.errors.Finding` (cause, source line, fix).

:meth:`Dispatch.dispatch` is what the engine's mode calls for every tensor operation: tensors
made anew at every step, constants and untagged operands are handled before the table.
"""

from __future__ import annotations

from typing import Callable

from ..dataflow import (_CONST_LIKE, _MADE, _MADE_LIKE, _NO_TENSOR, _PICK, _RANDOM_INPLACE,
                        Refusal, _name, module_path, tensors_in, user_frame)
from ..errors import Finding

Route = Callable  # (runtime, func, name, args, kwargs) -> the result, or PER_STEP
ROUTES: dict[str, Route] = {}


class _PerStep:
    def __repr__(self) -> str:
        return "PER_STEP"


PER_STEP = _PerStep()
"""What a route returns where it does not apply to these arguments: the operation runs per
step."""


def route(*names: str) -> Callable[[Route], Route]:
    """Register the decorated method as the route of the operations ``names``."""
    def register(fn: Route) -> Route:
        for name in names:
            if name in ROUTES:
                raise ValueError(f"operation {name!r} has a route already "
                                 f"({ROUTES[name].__qualname__})")
            ROUTES[name] = fn
        return fn
    return register


class Dispatch:
    """Every operation to its route."""

    def dispatch(self, func, args: tuple, kwargs: dict):
        """``func(*args, **kwargs)`` of the model's forward, as SAF runs it: untouched where no
        operand depends on the input, else by its route in :data:`ROUTES` (per step where it
        has none or its route declines)."""
        name = _name(func)
        if name in _NO_TENSOR:
            return func(*args, **kwargs)
        flat = tensors_in(args, tensors_in(kwargs) if kwargs else None)
        attr = self.reps.attr  # (the tags read once: Tags.get, inlined)
        reps = [r for r in (getattr(a, attr, None) for a in flat) if r is not None]
        tagged = bool(reps)
        if name in _MADE_LIKE or (not tagged and (name in _MADE or name in _RANDOM_INPLACE)):
            return self._made(func(*args, **kwargs), flat)
        if name in _RANDOM_INPLACE:  # a tagged tensor overwritten with random draws
            self._own(args[0], self.reps[args[0]])
            return self._made(func(*args, **kwargs), flat)
        if (self.undo is not None and name.endswith("_") and flat and self.buffers is not None
                and flat[0] in self.buffers):
            self.undo.append((flat[0], flat[0].detach().clone()))  # (BatchNorm's counter)
        if name == "batch_norm" and self.undo is not None:
            self._keep_statistics(args, kwargs)
        if not tagged or name in _CONST_LIKE:
            out = func(*args, **kwargs)
            if name in _PICK and _picks_by_number(args, kwargs):
                return self._made(out, ())  # a row of a table picked by a step counter
            return out
        self.no_checkpoint()
        bad = next((r.fbad for r in reps if r.fbad), None)
        if bad is not None:
            raise self._f_refusal(bad)
        if any(r.fout for r in reps):
            raise Refusal(Finding(
                module_path(), name, "unsupported",
                f"{name} at {user_frame()} computes with SAF-F outputs collected over time steps "
                "(spike representations, not spikes); under SAF-F they can only be returned",
                "return the collected outputs from forward, or train with SAF-E"))
        found = ROUTES.get(name)
        if found is None and name.endswith("_") and name != "requires_grad_":
            return self._inplace(func, name, args, kwargs)
        if found is not None:
            out = found(self, func, name, args, kwargs)
            if out is not PER_STEP:
                return out
        return self._per_step(func, name, args, kwargs)

    def _note(self, where: str, name: str, route: str) -> None:
        if self.record is not None:
            self.record.append((where, name, route))

    def _f_refusal(self, op: str) -> Refusal:
        name, _, where = op.partition(" at ")
        path = where.rpartition("(in module ")[2].rstrip(")") if "(in module " in where else ""
        return Refusal(Finding(
            "" if path == "<root>" else path, name, "unsupported",
            f"{op} is not linear in the accumulations, so it runs per step; SAF-F's gradient "
            "(the Spike Representation's) is defined for linear maps between neurons only",
            "train this model with SAF-E (set_saf(net, 'E')), which runs it exactly"))


def _picks_by_number(args, kwargs) -> bool:
    """Whether an indexing operation on a constant picks by a Python integer (``table[t]``,
    ``select(0, t)``, ``narrow(0, t, 1)``): a step-indexed table."""
    def number(a):
        return isinstance(a, int) and not isinstance(a, bool)

    for a in list(args[1:]) + list(kwargs.values()):
        if number(a) or (isinstance(a, tuple) and any(number(i) for i in a)):
            return True
    return False
