"""SAF's two modes (docs/theory.md, "SAF-E and Theorem 1", "SAF-F and Theorem 2") and SAF-F's
one rule about autograd graphs."""

from __future__ import annotations

from enum import Enum
from typing import Union


class Mode(str, Enum):
    """SAF-E: OTTT's gradient, a graph at every step. SAF-F: the Spike Representation's
    gradient, taken at the last step. A ``str`` enum: ``Mode.E == "E"``."""

    E = "E"
    F = "F"

    def __str__(self) -> str:
        return self.value


def keeps_graph(mode: Union[Mode, str], t: int, steps: int) -> bool:
    """Whether step ``t`` of a ``steps``-step sequence builds an autograd graph: every step in
    SAF-E; in SAF-F only the last (its loss is taken on the last step's spike representation,
    so steps 0..T−2 run without a graph and their memory is freed at once)."""
    return Mode(mode) is Mode.E or t == steps - 1
