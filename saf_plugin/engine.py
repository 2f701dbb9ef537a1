"""The entry of a converted model's forward: the engine's mode around the user's forward.

:func:`run` is the root module's forward under SAF: it refuses what must be refused before any
output (SAF-F's probe, ``torch.utils.checkpoint``), starts the runtime's step
(:class:`saf_plugin.runtime.Runtime`), runs the user's forward under a
:class:`torch.overrides.TorchFunctionMode` that hands every tensor operation to the runtime, and
turns the outputs back into the plain model's. A refusal in the first call switches the model
back and restores the buffers that call updated.
"""

from __future__ import annotations

import sys
from inspect import unwrap
from typing import Callable

import torch
import torch.utils.checkpoint as _ckpt
from torch import nn
from torch.overrides import TorchFunctionMode

from .dataflow import Refusal, module_path
from .errors import Finding, SAFError, SAFIncompatibleError
from .modes import Mode


class _Mode(TorchFunctionMode):
    def __init__(self, rt):
        super().__init__()
        self.rt = rt

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rt = self.rt
        if rt.paused:
            return func(*args, **kwargs)
        return rt.dispatch(func, args, kwargs)


# torch.utils.checkpoint's frames: checkpoint() (both variants), the reentrant Function's forward
_CK_CALL = getattr(unwrap(_ckpt.checkpoint), "__code__", None)
_CK_FORWARD = getattr(getattr(getattr(_ckpt, "CheckpointFunction", None), "forward", None),
                      "__code__", None)


def no_checkpoint(whole: bool = False) -> None:
    """Refuse an operation of a SAF forward that runs inside ``torch.utils.checkpoint``.

    Its backward recomputes the block outside the engine (the engine's mode is active only
    during the forward), where neurons refuse to run and per-step operations (max pooling, ...)
    would run on accumulations: an error in backward, or silently wrong gradients. One walk up
    the stack per routed operation, the same for both variants on every torch version (up to
    the engine's entry; ``whole``: the whole stack, once per call, for a checkpoint around the
    model)."""
    f = sys._getframe(1)
    while f is not None and f.f_code is not _CK_CALL and f.f_code is not _CK_FORWARD:
        if f.f_code is _RUN and not whole:
            return
        f = f.f_back  # (identity: hashing a code object hashes its bytecode)
    if f is None:
        return
    variant = ""
    while f is not None and "/torch/" in f.f_code.co_filename.replace("\\", "/"):
        if f.f_code is _CK_CALL:
            variant = f" (use_reentrant={f.f_locals.get('use_reentrant')})"
        f = f.f_back
    where = "<unknown>" if f is None else f"{f.f_code.co_filename}:{f.f_lineno}"
    raise Refusal(Finding(
        module_path(), "torch.utils.checkpoint", "unsupported",
        f"torch.utils.checkpoint{variant} at {where} recomputes its block in backward, outside "
        "the SAF engine, where the block's neurons and per-step operations (max pooling, ...) "
        "do not run as in the forward: its gradients would be wrong",
        "remove torch.utils.checkpoint under SAF; SAF-E's memory is already flat in T (a "
        "backward at every step keeps one step's graph)"))


def _probe(rt, args: tuple, kwargs: dict) -> None:
    """SAF-F's first call: run a copy of the model once, so that an operation SAF-F cannot
    take is refused before the model itself runs (and before any output)."""
    from copy import deepcopy

    rt.probed = True
    probe = deepcopy(rt.root)
    probe.__dict__["_saf_rt"].probed = True
    cpu = torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        with torch.no_grad():
            probe(*deepcopy(args), **deepcopy(kwargs))
    except SAFIncompatibleError:
        from .swap import revert

        revert(rt.root)
        raise
    except Exception:  # noqa: BLE001 - anything else shows up again in the real call
        pass
    finally:
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def run(rt, module: nn.Module, forward: Callable, args: tuple, kwargs: dict):
    """The forward of a converted model's root: the user's forward under the engine (called
    through :func:`entry`)."""
    if rt.active:
        return forward(module, *args, **kwargs)
    if rt.mode == Mode.F and not rt.probed:
        _probe(rt, args, kwargs)
    rt.active = True
    if not rt.started and rt.snapshot is None:
        rt.snapshot = [(m, k, b if b is None else b.clone()) for m in rt.root.modules()
                       for k, b in m._buffers.items()]
    rt.undo = []
    try:
        no_checkpoint(whole=True)
        rt.begin(args)
        with _Mode(rt):
            out = forward(module, *args, **kwargs)
        out = rt.output(out)
        rt.end()
        rt.snapshot = []  # the first call went through: nothing to undo any more
        return out
    except Refusal as r:
        from .swap import revert

        _undo(rt)
        first = bool(rt.snapshot) or not rt.started
        for m, k, b in rt.snapshot or ():  # refused in the first call: undo its buffer
            m._buffers[k] = b                # updates (BatchNorm statistics, snnTorch mem)
        rt.started = False
        revert(rt.root)
        raise SAFIncompatibleError([r.finding], header=(
            "SAF cannot run this model exactly; the model was switched back to the plain "
            "model" + (" (nothing was trained)" if first else " (the outputs of the calls "
                       "before this one were exact)"))) from None
    except SAFError:
        _undo(rt)  # a refused step leaves the buffers (BatchNorm statistics) as they were
        rt.interrupted = rt.started
        raise
    except BaseException:
        rt.interrupted = rt.started  # the next call must follow a reset
        raise
    finally:
        rt.active = False
        rt.undo = None


def _undo(rt) -> None:
    """Put back the buffers the refused call changed in place (``Runtime.undo``)."""
    for buf, saved in reversed(rt.undo or ()):
        with torch.no_grad():
            buf.copy_(saved)


_RUN = run.__code__  # the engine's entry: no_checkpoint's walk stops there


_ENTRY = None


def entry() -> Callable:
    """:func:`run`, which ``torch.compile`` runs eagerly (the engine's per-operation routing is
    Python that dynamo would guard on at every step); the plain model compiles as usual after
    ``set_saf(net, None)``. Made at the first call, so that ``import saf_plugin`` does not load
    dynamo."""
    global _ENTRY
    if _ENTRY is None:
        _ENTRY = torch.compiler.disable(run)
    return _ENTRY
