"""The data flow of a converted model's forward: what a tensor is to SAF, and the operation tables.

Every tensor that depends on the network input carries a :class:`Rep`: ``STEP`` (the tensor is
the per-step value v[t]), ``SPIKE`` (a neuron's real spikes s[t], with their accumulation â[t])
or ``ACC`` (an accumulation A[t] = Σ_k λ^k v[t−k], whose per-step value is A[t] − λ A[t−1]).
Tensors without one are constants. The tables below say which operations are shape operations,
which make constants, and which leave the tensor world; :mod:`saf_plugin.runtime` routes the rest.
See docs/theory.md ("When SAF is exact: the data flow").
"""

from __future__ import annotations

import itertools
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor, nn

from .errors import Finding

STEP, SPIKE, ACC = "step", "spike", "acc"


@dataclass(eq=False)
class Rep:
    """How a tensor relates to the per-step values (see the module docstring).

    ``decay``: λ of the accumulation (SPIKE, ACC). ``acc``: â of a SPIKE (None: the spikes
    themselves, as at t = 0). ``base``/``prev``/
    ``chain``: an ACC is ``chain(base)`` where ``base`` is the output of a linear site (None: the
    tagged tensor itself; a Rep never holds its own key, or the weak table would keep it) and
    ``prev`` that site's output one step earlier (None at t = 0). ``call``: the step it was
    made in. ``seq``: the sequence step index of its first row (t). ``time``: in step mode 'm',
    where its time axis is (:data:`saf_plugin.timeaxis.Time`; None: no time axis the engine can
    name); always None in step mode 's'.
    """

    kind: str
    call: int
    seq: int
    decay: float = 1.0
    acc: Optional[Tensor] = None
    base: Optional[Tensor] = None
    prev: Optional[Tensor] = None
    chain: tuple = ()
    time: Optional[tuple] = None
    site: Any = None
    raw: bool = False  # the network input, through no linear map or neuron (a loop's input)
    early: bool = False  # derived from the network input through no neuron
    sent: bool = False  # STEP: a per-step neuron's output, ``decay`` its λ (a readout's trace)
    sites: tuple = ()  # the linear sites an ACC went through since its last neuron
    fout: bool = False  # SAF-F outputs collected over steps: only the model's output
    fbad: Optional[str] = None  # SAF-F: made per step (op at file:line); refused where it is used
    origin: Any = None  # a neuron's input handed to hooks as per-step values: the accumulation
    since: int = 0  # SPIKE, ACC: the sequence step the accumulation started at (a neuron reset
                    # in the middle of a sequence starts a new one)

    def __reduce__(self):  # a tensor copied or pickled with its tag arrives untagged
        return _untagged, ()


def _untagged():
    return None


class Tags:
    """The :class:`Rep` of each tensor for one runtime, kept on the tensor itself (an attribute
    named for the runtime): a lookup is one attribute read, where a weak-keyed table costs
    about twenty times more, and it goes as the tensor goes. A copied or pickled tensor does not
    carry its tag (``Rep`` copies and pickles as None)."""

    _count = itertools.count()

    def __init__(self):
        self.attr = f"_saf_rep{next(Tags._count)}"
        self.recent: list = []  # weak references to the tensors tagged in this call

    def get(self, t, default=None):
        return getattr(t, self.attr, default)

    def __contains__(self, t) -> bool:
        return getattr(t, self.attr, None) is not None

    def __getitem__(self, t):
        rep = getattr(t, self.attr, None)
        if rep is None:
            raise KeyError("untagged tensor")
        return rep

    def __setitem__(self, t, rep) -> None:
        setattr(t, self.attr, rep)
        self.recent.append(weakref.ref(t))

    def items(self):
        """(tensor, Rep) of the tensors tagged in this call that are still alive."""
        for ref in self.recent:
            t = ref()
            rep = None if t is None else getattr(t, self.attr, None)
            if rep is not None:
                yield t, rep


class Site:
    """The state of one operation position in a step."""

    __slots__ = ("key", "where", "in_acc", "in_since", "out_prev", "needs_prev", "recv",
                 "recv_from", "recv_call", "time", "since", "call_since", "versions")

    def __init__(self, key: tuple, where: str):
        self.key, self.where = key, where
        self.in_acc: dict[int, Tensor] = {}  # accumulated per-step input, per operand
        self.in_since: dict[int, int] = {}  # the step each of those accumulations started at
        self.out_prev: Optional[Tensor] = None
        self.needs_prev = False
        self.recv: Optional[float] = None  # λ of the neuron its output reaches (OTTT's trace)
        self.recv_from = None  # that neuron (the module)
        self.recv_call = -1  # the step it was learnt at
        self.since = 0  # where the accumulation of its last output started
        self.call_since = 0  # ... and of this call's output (the latest start of its operands)
        self.versions: Optional[tuple] = None  # its parameters' versions at its last call
        self.time = None  # step mode 'm': the time layout of its output in this call

    def clear(self) -> None:
        self.in_acc = {}
        self.in_since = {}
        self.out_prev = None
        self.since = 0
        self.versions = None


class Refusal(Exception):
    """Raised inside a forward: the engine found something SAF cannot run exactly."""

    def __init__(self, finding: Finding):
        super().__init__(finding.line())
        self.finding = finding


def user_frame() -> str:
    """file:line of the innermost frame outside torch and saf_plugin (the forward that runs the
    operation; for a torch.nn module, the line of its own forward), and the path of the innermost
    module of the converted model that runs it."""
    where, path = "<unknown>", None
    f = sys._getframe(1)
    while f is not None:
        name = f.f_code.co_filename.replace("\\", "/")
        if where == "<unknown>" and not ("/torch/" in name or "/saf_plugin/" in name
                                         or name.startswith("<")):
            where = f"{f.f_code.co_filename}:{f.f_lineno}"
        owner = f.f_locals.get("self")
        if path is None and isinstance(owner, nn.Module) and "_saf_path" in owner.__dict__:
            path = owner.__dict__["_saf_path"] or "<root>"
            if where == "<unknown>" and "/saf_plugin/" not in name:  # a torch.nn module's own
                where = f"{f.f_code.co_filename}:{f.f_lineno}"  # forward: its line, not the caller's
        if where != "<unknown>" and path is not None:
            break
        f = f.f_back
    return where if path is None else f"{where} (in module {path})"


def module_path() -> str:
    """The path of the innermost module of the converted model on the call stack ('' if none)."""
    f = sys._getframe(1)
    while f is not None:
        owner = f.f_locals.get("self")
        if isinstance(owner, nn.Module) and "_saf_path" in owner.__dict__:
            return owner.__dict__["_saf_path"]
        f = f.f_back
    return ""


_ATOMS = frozenset({int, float, bool, str, type(None)})  # exact types that hold no tensor


def tensors_in(obj, out: Optional[list] = None) -> list:
    """The tensors in (nested lists, tuples and dicts of) ``obj``, in order: what the engine
    looks at in every operation's arguments (``torch.utils._pytree`` costs several times more
    per operation)."""
    out = [] if out is None else out
    if isinstance(obj, Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            if type(o) in _ATOMS:  # (most arguments: strides, flags; two isinstance less)
                continue
            if isinstance(o, Tensor):
                out.append(o)
            elif isinstance(o, (list, tuple, dict)):
                tensors_in(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            tensors_in(o, out)
    return out


def map_tensors(fn, obj):
    """``obj`` with every tensor in its nested lists, tuples and dicts replaced by ``fn(t)``."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        items = [map_tensors(fn, o) for o in obj]
        if type(obj) in (list, tuple):
            return type(obj)(items)
        return type(obj)(*items)  # a named tuple
    if isinstance(obj, dict):
        return {k: map_tensors(fn, v) for k, v in obj.items()}
    return obj


_INPLACE_DUNDER = {"iadd": "add_", "isub": "sub_", "imul": "mul_", "itruediv": "div_",
                   "idiv": "div_"}


# values leaving the tensor world (Python numbers, printing, NumPy): always the per-step value
_ESCAPE = {"__float__", "__int__", "__bool__", "__index__", "__complex__", "item", "tolist",
           "numpy", "__array__", "__format__", "__repr__", "__str__", "equal", "allclose",
           "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "eq", "ne", "lt", "le",
           "gt", "ge", "isclose"}


_NAMES: dict = {}


def _name(func) -> str:
    """``__add__`` -> "add", ``add_`` stays "add_" (in place), ``__iadd__`` -> "add_" (cached
    per function)."""
    try:
        return _NAMES[func]
    except (KeyError, TypeError):
        pass
    name = getattr(func, "__name__", str(func))
    if name in _ESCAPE:
        name = "escape"
    else:
        if name.startswith("__") and name.endswith("__"):
            name = name[2:-2]
        name = _INPLACE_DUNDER.get(name, name)
    try:
        _NAMES[func] = name
    except TypeError:  # (an unhashable callable)
        pass
    return name


# --------------------------------------------------------------------------- op tables

_SHAPE = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze",
    "permute", "transpose", "t", "contiguous", "clone", "detach", "to", "type", "float",
    "double", "half", "bfloat16", "cpu", "cuda", "expand", "expand_as", "getitem", "movedim",
    "moveaxis", "swapaxes", "swapdims", "narrow", "select", "chunk", "split", "unbind",
    "ravel", "alias", "repeat", "tile", "repeat_interleave",
}
# made in forward, the same at every step: constants
_CONST_LIKE = {"zeros_like", "ones_like", "empty_like", "new_zeros", "new_ones", "new_empty"}
# made in forward anew at every step (random draws, values from Python numbers): per-step values
_MADE = {"rand", "randn", "randint", "rand_like", "randn_like", "randint_like", "randperm",
         "bernoulli", "multinomial", "normal", "poisson", "full", "full_like", "new_full",
         "new_tensor", "tensor", "as_tensor", "scalar_tensor", "arange", "linspace", "logspace",
         "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
         "feature_alpha_dropout", "rrelu"}
_RANDOM_INPLACE = {"uniform_", "normal_", "bernoulli_", "exponential_", "geometric_",
                   "log_normal_", "cauchy_", "random_"}
# made like a tensor (its shape, dtype and device only): per-step values
_MADE_LIKE = {"rand_like", "randn_like", "randint_like", "full_like", "new_full", "new_tensor"}
# picking rows of a constant table by an integer (a step counter): per-step values
_PICK = {"getitem", "select", "index_select", "narrow", "take", "embedding"}
_NO_TENSOR = {"size", "dim", "numel", "get", "len", "stride", "is_contiguous", "data_ptr",
              "element_size", "nelement", "ndimension", "is_floating_point",
              "is_complex", "storage_offset"}
_POOL = {"avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
         "adaptive_avg_pool2d", "adaptive_avg_pool3d"}
_CONV = {"conv1d": 1, "conv2d": 2, "conv3d": 3, "conv_transpose1d": 1, "conv_transpose2d": 2,
         "conv_transpose3d": 3}
_DROPOUT = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
            "feature_alpha_dropout"}
