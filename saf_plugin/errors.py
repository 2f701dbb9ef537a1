"""Errors raised by saf-plugin. All are ``ValueError`` subclasses so callers can catch one type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["exact", "approximate", "unsupported"]


@dataclass(frozen=True)
class Finding:
    """What the checker says about one module.

    ``path`` is the dotted name ``named_modules()`` gives ('' for the root), ``status`` one of
    ``"exact"``, ``"approximate"`` or ``"unsupported"``; ``reason`` says why, ``fix`` what to do.
    """

    path: str
    module: str
    status: Status
    reason: str
    fix: str = ""

    def line(self) -> str:
        where = self.path or "<root>"
        text = f"{where} ({self.module}): {self.status}: {self.reason}"
        return f"{text}; fix: {self.fix}" if self.fix else text


class SAFError(ValueError):
    """Base class of saf-plugin's errors."""


class SAFIncompatibleError(SAFError):
    """The model cannot be switched to SAF as asked; ``findings`` lists every offending module."""

    def __init__(self, findings: list[Finding], *, header: str = ""):
        self.findings = list(findings)
        head = header or "SAF cannot be applied exactly to this model; nothing was changed."
        super().__init__("\n  ".join([head, *(f.line() for f in self.findings)]))


class SAFStateError(SAFError):
    """A SAF model was used in a way that would silently give wrong values."""


class WeightChangeWarning(UserWarning):
    """A weight of a SAF-E model changed in the middle of a sequence (see ``set_saf``'s
    ``on_weight_change``)."""
