"""``MODULE:CALLABLE`` model factories, as ``saf check`` and ``saf bench`` take them."""

from __future__ import annotations

import os
import pkgutil
import sys

from torch import nn


class FactoryError(Exception):
    """A factory that cannot be imported, called or does not return a model (one line)."""


def build_model(spec: str) -> nn.Module:
    """Import ``MODULE:CALLABLE`` with :func:`pkgutil.resolve_name` (the current directory
    on ``sys.path``), call it without arguments and return the model it builds."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise FactoryError(f"expected MODULE:CALLABLE (e.g. saf_plugin.bench.models:mlp), "
                           f"got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        factory = pkgutil.resolve_name(spec)
    except AttributeError:
        raise FactoryError(f"module {module!r} has no attribute {attr!r}") from None
    except Exception as e:  # ImportError, or anything the module raises at import time
        raise FactoryError(f"cannot import {module!r}: {type(e).__name__}: {e}") from None
    if not callable(factory):
        raise FactoryError(f"{spec} is not callable")
    try:
        net = factory()
    except Exception as e:
        raise FactoryError(f"{spec}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(net, nn.Module):
        raise FactoryError(f"{spec}() returned {type(net).__name__}, not a torch.nn.Module")
    return net
