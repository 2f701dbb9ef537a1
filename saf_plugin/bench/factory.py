"""``MODULE:CALLABLE`` model factories, as ``saf check`` and ``saf bench`` take them."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable


class FactoryError(Exception):
    """A factory that cannot be imported or is not callable (one line of text)."""


def load_factory(spec: str) -> Callable:
    """Import ``MODULE:CALLABLE`` (CALLABLE may be dotted) and return the callable.
    ``MODULE`` is imported with the current directory on ``sys.path``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise FactoryError(f"expected MODULE:CALLABLE (e.g. mypkg.models:make_net), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or anything the module raises at import time
        raise FactoryError(f"cannot import {module_name!r}: {type(e).__name__}: {e}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FactoryError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise FactoryError(f"{spec} is not callable")
    return obj
