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
from copy import deepcopy
from inspect import unwrap
from typing import Callable

import torch
import torch.utils.checkpoint as _ckpt
from torch import nn
from torch.nn.modules import module as _m
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .converted import revert
from .dataflow import Refusal, module_path
from .errors import Finding, SAFError, SAFIncompatibleError
from .modes import Mode
from .registry import reset_model


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


def _probe(rt, args: tuple, kwargs: dict, sig) -> None:
    """Learn, before the model itself runs, what only its data flow shows, on copies of the
    model run without autograd (their hooks removed, the random state put back):

    - SAF-F: an operation SAF-F cannot take is refused before any output;
    - step mode 'm' (a call of a new signature, :meth:`Runtime.signature`): which dimension
      of the input is time (dim 0 if it reaches the neurons' time axis, dim 0 of their input,
      through operations that keep it; else another dim of T rows that does; else none: the
      input is then a per-step value without a time axis the linear maps could accumulate
      along), the number of steps, and the neuron each linear map feeds (its weights then see
      the trace with that neuron's decay from the first call on: OTTT's rule).
    """
    cpu = torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        if rt.mode == Mode.F and not rt.probed:
            rt.probed = True
            _run_copy(rt, args, kwargs, None)
        if sig is not None and sig not in rt.learned:
            rt.learned[sig] = _learn(rt, args, kwargs)
    except SAFIncompatibleError:
        revert(rt.root)
        raise
    finally:
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _learn(rt, args, kwargs):
    """Step mode 'm': the input dim that is time (dim 0 first, then the others of T rows, T the
    first neuron's steps), tested on copies; then, on a copy, the neuron each linear map feeds."""
    x = next((a for a in tree_flatten(args)[0] if torch.is_tensor(a)), None)
    if x is None or x.dim() == 0:
        return None
    steps = None
    for dim in range(x.dim()):
        if dim and (steps is None or x.shape[dim] != steps):
            continue
        got = _run_copy(rt, args, kwargs, (dim, x.shape[dim]))
        if got is None:
            return None
        steps = got.steps
        if got.confirmed:
            return got
    if steps is None:
        return None
    return _run_copy(rt, args, kwargs, (None, steps))  # no input dim is time


def _run_copy(rt, args, kwargs, time_dim):
    """Run a copy of the model on copies of the arguments (no autograd, no hooks, its state
    reset); ``time_dim``: (the input dim taken as time, its size) to test. Returns what the
    copy learned (:class:`saf_plugin.runtime.Learned`), or None if it failed (the real call
    then shows the error)."""
    probe = deepcopy(rt.root)
    for m in probe.modules():
        for hooks in ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks",
                      "_backward_pre_hooks"):
            if getattr(m, hooks, None):
                setattr(m, hooks, type(getattr(m, hooks))())
    prt = probe.__dict__["_saf_rt"]
    prt.probed = True
    prt.probing = time_dim if time_dim is not None else False
    reset_model(probe)

    saved = (_m._global_forward_pre_hooks, _m._global_forward_hooks)
    _m._global_forward_pre_hooks, _m._global_forward_hooks = type(saved[0])(), type(saved[1])()
    try:
        with torch.no_grad():
            probe(*deepcopy(args), **deepcopy(kwargs))
    except SAFIncompatibleError:
        if time_dim is not None and time_dim[0] is not None:
            return prt.lesson(rt)  # (refused under a wrong guess of the time dim)
        raise
    except Exception:  # noqa: BLE001 - anything else shows up again in the real call
        if prt.stopped:
            return prt.lesson(rt)
        return None
    finally:
        _m._global_forward_pre_hooks, _m._global_forward_hooks = saved
    return prt.lesson(rt)


def run(rt, module: nn.Module, forward: Callable, args: tuple, kwargs: dict):
    """The forward of a converted model's root: the user's forward under the engine (called
    through :func:`entry`)."""
    if rt.active:
        return forward(module, *args, **kwargs)
    sig = rt.signature(args) if not rt.probing else None
    if not rt.probing and ((rt.mode == Mode.F and not rt.probed) or (
            sig is not None and sig not in rt.learned)):
        _probe(rt, args, kwargs, sig)
    rt.active = True
    if not rt.started and rt.snapshot is None:
        rt.snapshot = [(m, k, b if b is None else b.clone()) for m in rt.root.modules()
                       for k, b in m._buffers.items()]
    rt.undo = []
    try:
        no_checkpoint(whole=True)
        rt.begin(args, sig)
        with _Mode(rt):
            out = forward(module, *args, **kwargs)
        out = rt.output(out)
        rt.end()
        rt.snapshot = []  # the first call went through: nothing to undo any more
        return out
    except Refusal as r:
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
