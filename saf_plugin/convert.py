"""Switching a model to SAF in place and back: ``set_saf``, ``saf_mode``, ``check``, ``fix``.

How a converted model runs (``../shared/SAF.md``):

- The *entry* module (the outermost module that is first in the model) accumulates the network
  input with the first neuron's decay: â_x[t] = λ â_x[t−1] + x[t].
- Affine modules add their constant β scaled by the series: y = A â + β c[t] (in SAF-E the extra
  (c[t] − 1) β is added detached, so a bias gets OTTT's gradient δ rather than c[t] δ).
- Neurons receive Y[t] and pass on â[t] (:mod:`saf_plugin.core`); a neuron whose decay differs
  from its sender's re-accumulates its input.
- The *exit* module (the outermost module that is last) de-accumulates, o[t] = O[t] − λ O[t−1]
  (SAF-E), or returns the spike representation O[t] / c[t] (SAF-F).

Modules keep their identity: only ``__class__`` is swapped to a SAF subclass created once per
class, and SAF state lives in attributes that ``set_saf(net, None)`` deletes again.
"""

from __future__ import annotations

import copy
import warnings
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from . import core
from .errors import Finding, SAFIncompatibleError, SAFStateError
from .registry import Spec, load_adapters, lookup

MODES = ("E", "F", None)
_LAYER_CLASSES: dict[tuple, type] = {}


# --------------------------------------------------------------------------- the walk


def _walk(net: nn.Module) -> Iterator[tuple[str, nn.Module, Optional[Spec]]]:
    """Yield (path, module, spec) for every module that matters: neurons and leaves.

    Children of neurons (e.g. surrogate functions) are not visited; modules with children
    and no spec of their own are containers and are only walked into.
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
            yield path, module, spec  # leaves, and containers that are judged as a whole


def _judge(path: str, module: nn.Module, spec: Optional[Spec]) -> Finding:
    name = getattr(type(module), "_saf_base", type(module)).__name__
    if spec is None:
        return Finding(
            path, name, "unsupported",
            f"saf-plugin does not know {name}; SAF is exact only if every map between neurons "
            "is linear or affine (a subclass that overrides forward or the neuron dynamics is "
            "not covered by its parent)",
            f"if {name} is linear, call saf_plugin.register_linear({name}, shift=...) before "
            "set_saf; otherwise replace it",
        )
    if spec.role == "container" and spec.judge is None:
        return Finding(path, name, "exact", "empty container", "")
    if spec.judge is None:
        return Finding(path, name, "exact", f"{spec.role} map", "")
    status, reason, fix_hint = spec.judge(module)
    return Finding(path, name, status, reason, fix_hint)


def check(net: nn.Module) -> list[Finding]:
    """One :class:`Finding` per module that matters (neurons and leaf modules).

    Never raises on a model it can walk. ``status`` is "exact", "approximate" (SAF runs but
    the forward is no longer the LIF forward) or "unsupported" (SAF cannot run it).
    """
    load_adapters()
    findings = [_judge(p, m, s) for p, m, s in _walk(net)]
    neurons = [(p, m) for p, m, s in _walk(net) if s is not None and s.role == "neuron"]
    if not neurons:
        findings.append(Finding("", type(net).__name__, "unsupported",
                                "the model has no spiking neuron saf-plugin knows",
                                "SAF needs LIF/IF neurons (SpikingJelly or snnTorch)"))
    modes = {getattr(m, "step_mode", "s") for _, m in neurons}
    if len(modes) > 1:
        findings.append(Finding("", type(net).__name__, "unsupported",
                                "neurons mix step modes 's' and 'm'",
                                "use functional.set_step_mode(net, 's' or 'm') first"))
    findings += _mixed_decay_findings(net)
    return findings


def _mixed_decay_findings(net: nn.Module) -> list[Finding]:
    """Receivers fed by neurons of different decays (e.g. a skip connection across layers of
    different τ, or learnable τ): SAF re-accumulates a neuron's input from ONE sender decay,
    so such a mix is not exact. Found on the torch.fx data-flow graph; a model fx cannot
    trace (data-dependent Python control flow) is not analysed."""
    import torch.fx

    def is_leaf(m: nn.Module) -> bool:
        spec = lookup(m)
        return (spec is not None and spec.role != "container") or next(m.children(), None) is None

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return is_leaf(m)

    try:  # on a copy: tracing runs the forward's Python (e.g. snnTorch's init_leaky())
        graph = Tracer().trace(_meta_copy(net))
    except Exception:  # noqa: BLE001 - any tracing failure means "not analysed"
        return []
    decays: dict[str, tuple[float, bool]] = {}
    sources: dict = {}
    findings = []
    for node in graph.nodes:
        upstream = set().union(*(sources.get(a, set()) for a in node.all_input_nodes))
        module = net.get_submodule(node.target) if node.op == "call_module" else None
        spec = lookup(module) if module is not None else None
        receiver = node.op == "output" or (spec is not None and spec.role == "neuron")
        if receiver and len(upstream) > 1:
            values = {decays[p] for p in upstream}
            if len({v for v, _ in values}) > 1 or any(learn for _, learn in values):
                where = node.target if node.op == "call_module" else ""
                what = "neuron" if node.op == "call_module" else "model output"
                findings.append(Finding(
                    where, type(module).__name__ if module is not None else type(net).__name__,
                    "approximate",
                    f"this {what} receives from neurons of different or learnable decays "
                    f"({', '.join(sorted(upstream))}); SAF re-accumulates its input from one "
                    "sender decay, so the mix is not exact",
                    "give the neurons feeding one layer the same fixed τ, or pass strict=False"))
        if spec is not None and spec.role == "neuron":
            try:
                decay = spec.neuron.decay(module)  # AttributeError: a refused class
                decays[node.target] = (float(decay.detach()) if torch.is_tensor(decay) else
                                       float(decay), torch.is_tensor(decay) and decay.requires_grad)
            except (AttributeError, TypeError, ValueError, RuntimeError):  # refused anyway
                decays[node.target] = (float("nan"), False)
            sources[node] = {node.target}
        else:
            sources[node] = upstream
    return findings


def _meta_copy(net: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers live on the meta device (no data copied)."""
    memo: dict = {}
    for t in [*net.parameters(), *net.buffers()]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(net, memo)


def fix(net: nn.Module) -> list[Finding]:
    """Repair what can be repaired, in place, and report each change.

    MaxPool -> AvgPool of the same geometry (a new module: hooks on the old one are gone),
    hard reset -> soft reset (the same neuron object). Parameters are untouched, so an
    optimizer built before keeps working.
    """
    load_adapters()
    if saf_mode(net) is not None:
        raise SAFStateError("fix() changes modules: call set_saf(net, None) first")
    changes: list[Finding] = []
    replacements: list[tuple[str, nn.Module]] = []
    for path, module, spec in list(_walk(net)):
        name = type(module).__name__
        if spec is None:
            continue
        if spec.role == "neuron" and spec.neuron is not None and spec.neuron.fix is not None:
            if _judge(path, module, spec).status != "exact":
                note = spec.neuron.fix(module)
                if note:
                    changes.append(Finding(path, name, "exact", note, ""))
        elif spec.repair is not None and _judge(path, module, spec).status != "exact":
            new, note = spec.repair(module)
            if new is not None:
                new.train(module.training)
                replacements.append((path, new))
            changes.append(Finding(path, name, "exact" if new is not None else "unsupported",
                                   note, ""))
    for path, new in replacements:
        parent_path, _, child = path.rpartition(".")
        parent = net.get_submodule(parent_path) if parent_path else net
        setattr(parent, child, new)
    _invalidate_reset_cache(net)
    return changes


# --------------------------------------------------------------------------- the context


class SAFContext:
    """Run-time state shared by the SAF modules of one converted model.

    ``t`` is the index of the current step (first step of the current chunk in 'm' mode) and
    ``steps`` the number of steps in the current call; ``decay`` is the λ of the neuron that
    sent the tensor now flowing (the bias series and the exit use it).
    """

    def __init__(self, mode: str, strict: bool, clock: nn.Module, clock_adapter,
                 entry: nn.Module, exit_: nn.Module):
        self.mode = mode
        self.strict = strict
        self.clock = clock
        self.clock_adapter = clock_adapter
        self.entry = entry
        self.exit = exit_
        self.t = 0
        self.steps = 1
        self.decay = 1.0
        self.input_acc: Optional[Tensor] = None
        self.output_prev: Optional[Tensor] = None
        self.warned: set[str] = set()
        self.running = False  # between the entry's and the exit's call of one step
        self._series: dict[tuple, Tensor] = {}

    @property
    def step_mode(self) -> str:
        """The neurons' step mode, read live (``functional.set_step_mode`` may change it)."""
        return getattr(self.clock, "step_mode", "s")

    # -- order: the entry must run first and the exit last in every step
    def arrive(self, module: nn.Module, x: Tensor) -> Tensor:
        """Called by every SAF module with its input; the entry accumulates it."""
        if module is self.entry:
            return self.enter(x)
        if not self.running:
            raise SAFStateError(
                f"{module._saf_path} ran before the model's entry module "
                f"{self.entry._saf_path or '<root>'} in this step: saf-plugin takes the first "
                "registered module as the one that receives the network input and the last as "
                "the one that returns the output, and each module object as one layer; register "
                "submodules in the order forward uses them, give every layer its own module "
                "object, and call the model, not a submodule")
        return x

    def depart(self) -> None:
        """Called when the exit module has produced the step's output."""
        self.running = False

    # -- time
    def enter(self, x: Tensor) -> Tensor:
        """Accumulate the network input and advance the clock."""
        fresh = self.clock_adapter.is_fresh(self.clock) or self.input_acc is None
        shape = x.shape[1:] if self.step_mode == "m" else x.shape
        if not fresh and self.input_acc.shape != shape:
            if not self.clock_adapter.reset_on_shape_change:
                raise SAFStateError(
                    f"the input shape changed from {tuple(self.input_acc.shape)} to "
                    f"{tuple(shape)} without a reset; reset the model between sequences "
                    "(spikingjelly: functional.reset_net(net))")
            fresh = True
        if self.running and not fresh:
            raise SAFStateError(
                f"the model's exit module {self.exit._saf_path or '<root>'} did not run in the "
                "previous step: either that step was interrupted (reset the model, e.g. "
                "functional.reset_net(net), before the next sequence) or forward uses its "
                "submodules in another order than they are registered (saf-plugin takes the "
                "last registered module as the one that returns the output)")
        self.running = True
        self.decay = _as_float(self.clock_adapter.decay(self.clock))
        prev = None if fresh else self.input_acc
        if self.step_mode == "m":
            self.t = 0 if fresh else self.t + self.steps
            self.steps = x.shape[0]
            acc = core.accumulate(x, self.decay, prev)
            self.input_acc = acc[-1].detach()
        else:
            self.t = 0 if fresh else self.t + 1
            self.steps = 1
            acc = core.accumulate_step(x, prev, self.decay)
            self.input_acc = acc.detach()
        if fresh:
            self.output_prev = None
        return acc

    def series(self, decay: float, *, like: Tensor) -> Tensor:
        """c[t] for the steps of this call: shape [steps] (cached until the clock moves)."""
        key = (self.t, self.steps, decay, like.dtype, like.device)
        if key not in self._series:
            if len(self._series) > 64:
                self._series.clear()
            self._series[key] = core.bias_series(self.t, self.steps, decay, like=like)
        return self._series[key]

    def time_view(self, x: Tensor, folded: bool) -> Tensor:
        """View [T, ...] of a tensor that is [T, B, ...] or time-folded [T*B, ...]."""
        return x.unflatten(0, (self.steps, -1)) if folded else x

    # -- the exit
    def leave(self, out: Tensor) -> Tensor:
        """SAF-E: o[t] = O[t] − λ O[t−1]; SAF-F: the spike representation O[t] / c[t]."""
        self.depart()
        if self.step_mode == "m" and out.shape[0] != self.steps:
            raise SAFStateError(
                f"the model's output has shape {tuple(out.shape)}, whose first dimension is not "
                f"the {self.steps} time steps of its input; in step mode 'm' SAF needs the "
                "last module to return [T, ...]")
        if self.mode == "F":
            c = self.series(self.decay, like=out)
            c = c if self.step_mode == "m" else c[0]
            return out / c.view(-1, *([1] * (out.dim() - 1))) if c.dim() else out / c
        if self.step_mode == "m":
            o = core.deaccumulate(out, self.decay, self.output_prev)
        else:
            o = core.deaccumulate_step(out, self.output_prev, self.decay)
        self.output_prev = (out[-1] if self.step_mode == "m" else out).detach()
        return o

    # -- guards
    def guard(self, module: nn.Module, spec: Spec) -> None:
        """Re-judge a module whose status depends on train/eval mode at every call."""
        finding = _judge(module._saf_path, module, spec)
        if finding.status == "exact":
            return
        if self.strict:
            raise SAFIncompatibleError([finding], header=(
                "a module became inexact after set_saf (strict=True)"))
        if finding.path not in self.warned:
            self.warned.add(finding.path)
            warnings.warn(finding.line(), stacklevel=3)


def _as_float(decay) -> float:
    return float(decay.detach()) if torch.is_tensor(decay) else float(decay)


# --------------------------------------------------------------------------- SAF layers


def _is_unfolded(module: nn.Module) -> bool:
    """SpikingJelly layers in step mode 'm' see [T, B, ...]; everything else one step or [T*B, ...]."""
    try:
        return getattr(module, "step_mode", "s") == "m" and not isinstance(module, nn.Sequential)
    except Exception:  # pragma: no cover - exotic step_mode properties
        return False


def saf_layer_forward(module: nn.Module, base: type, args: tuple, kwargs: dict):
    """The forward of every non-neuron SAF module (see the module docstring)."""
    ctx: SAFContext = module._saf_ctx
    spec: Spec = module._saf_spec
    x, rest = args[0], args[1:]
    x = ctx.arrive(module, x)
    if spec is not None and spec.runtime:
        ctx.guard(module, spec)
    split = (ctx.mode == "F" and ctx.step_mode == "m" and ctx.steps > 1
             and torch.is_grad_enabled() and module._saf_split)
    if split:  # SAF-F: steps 0..T-2 build no graph, the last step's keeps no [T, ...] alive
        k = x.shape[0] * (ctx.steps - 1) // ctx.steps
        with torch.no_grad():
            head = base.forward(module, x[:k], *rest, **kwargs)
        out = torch.cat([head, base.forward(module, x[k:].clone(), *rest, **kwargs)])
    else:
        out = base.forward(module, x, *rest, **kwargs)
    if spec is not None and spec.shift is not None:
        out = _add_series(ctx, module, spec, out)
    if module is ctx.exit:
        out = ctx.leave(out)
    return out


def _add_series(ctx: SAFContext, module: nn.Module, spec: Spec, out: Tensor) -> Tensor:
    """out + (c[t] − 1) β, so that Y = A â + β c[t].

    SAF-E detaches the added part: a bias then gets OTTT's gradient δ (not c[t] δ). SAF-F
    keeps it: d/dβ of the spike representation Y/c[t] is then the Spike Representation's.
    """
    unfolded = _is_unfolded(module)
    sample_ndim = out.dim() - 1 - (1 if (ctx.step_mode == "m" and unfolded) else 0)
    shift = spec.shift(module, out, sample_ndim)
    if shift is None:
        return out
    if ctx.mode == "E":
        shift = shift.detach()
    c = ctx.series(ctx.decay, like=out) - 1.0
    if ctx.step_mode == "s":
        return out + c[0] * shift if ctx.t > 0 else out
    view = ctx.time_view(out, folded=not unfolded)
    coef = c.view(-1, *([1] * (view.dim() - 1)))
    return (view + coef * shift).reshape(out.shape)


def _layer_class(cls: type, spec: Optional[Spec]) -> type:
    methods = {} if spec is None else spec.methods
    key = (cls, tuple(sorted(methods)))
    if key not in _LAYER_CLASSES:
        def forward(self, *args, **kwargs):
            return saf_layer_forward(self, cls, args, kwargs)

        _LAYER_CLASSES[key] = type(f"SAF{cls.__name__}", (cls,), {
            "forward": forward, "_saf_base": cls, "__module__": cls.__module__, **methods,
            "__doc__": f"{cls.__name__} under SAF (class swapped in place by saf_plugin.set_saf)."})
    return _LAYER_CLASSES[key]


# --------------------------------------------------------------------------- set_saf


def saf_mode(net: nn.Module) -> Optional[str]:
    """"E", "F" or None (the ordinary spiking model)."""
    ctx = getattr(net, "_saf_root_ctx", None)
    return None if ctx is None else ctx.mode


def _invalidate_reset_cache(net: nn.Module) -> None:
    import sys

    fn = getattr(sys.modules.get("spikingjelly.activation_based.functional"),
                 "invalidate_reset_cache", None)
    if fn is not None:
        fn(net)


def _edge_module(net: nn.Module, leaf: str, first: bool) -> nn.Module:
    """The outermost module below the root whose first (or last) descendant chain is ``leaf``.

    The entry and exit must see whole sequences [T, ...] in step mode 'm', so a layer inside a
    time-folding container (SeqToANNContainer) hands the role to that container.
    """
    parts = leaf.split(".")
    for i in range(1, len(parts) + 1):
        outer = module = net.get_submodule(".".join(parts[:i]))
        for name in parts[i:]:
            names = list(module._modules)
            if name != (names[0] if first else names[-1]):
                break
            module = module._modules[name]
        else:
            return outer
    return net.get_submodule(leaf)  # pragma: no cover - the loop returns at i == len(parts)


def set_saf(net: nn.Module, mode: Optional[str], *, strict: bool = True) -> nn.Module:
    """Switch ``net`` in place to SAF-E (``"E"``), SAF-F (``"F"``) or back (``None``).

    Everything is validated before anything changes: with ``strict=True`` any approximate or
    unsupported module raises :class:`SAFIncompatibleError` naming every offending module;
    with ``strict=False`` approximate modules only warn. Returns ``net``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown SAF mode {mode!r}; valid modes are 'E', 'F' and None")
    load_adapters()
    own = getattr(net, "_saf_root_ctx", None)
    foreign = next((p for p, m in net.named_modules()
                    if m.__dict__.get("_saf_ctx") not in (None, own)), None)
    if foreign is not None:
        raise SAFStateError(
            f"{foreign or '<root>'} is already switched to SAF by set_saf on another module "
            "(a submodule or an enclosing model); call set_saf(that_module, None) first")
    if mode is None:
        _revert(net)
        return net
    findings = check(net)
    bad = [f for f in findings if f.status == "unsupported"
           or (strict and f.status == "approximate")]
    if bad:
        raise SAFIncompatibleError(bad)
    for f in findings:
        if f.status == "approximate":
            warnings.warn(f"SAF is approximate here: {f.line()}", stacklevel=2)
    _revert(net)
    _apply(net, mode, strict)
    return net


def _apply(net: nn.Module, mode: str, strict: bool) -> None:
    walked = list(_walk(net))
    neurons = [(p, m, s) for p, m, s in walked if s is not None and s.role == "neuron"]
    leaves = [p for p, m, s in walked if s is None or s.role != "container"]
    entry = _edge_module(net, leaves[0], first=True)
    last = net.get_submodule(leaves[-1])
    is_neuron = (lookup(last) or Spec("linear")).role == "neuron"
    exit_ = last if is_neuron else _edge_module(net, leaves[-1], first=False)
    ctx = SAFContext(mode, strict, neurons[0][1], neurons[0][2].neuron, entry, exit_)
    swapped: list[nn.Module] = []
    for path, module, spec in walked:
        if spec is not None and spec.role == "neuron":
            module.__class__ = spec.neuron.saf_class(type(module))
            module._saf_ctx, module._saf_path, module._saf_spec = ctx, path, spec
            spec.neuron.attach(module)
            swapped.append(module)
        elif (module is entry or module is exit_ or (spec is not None and (spec.shift or spec.runtime))
              or next(module.parameters(recurse=False), None) is not None
              or (mode == "F" and next(module.children(), None) is None)):
            _swap_layer(module, path, spec, ctx)
            swapped.append(module)
    for module in (entry, exit_):
        if module not in swapped:
            path = next(p for p, m in net.named_modules() if m is module)
            _swap_layer(module, path, lookup(module), ctx)
            swapped.append(module)
    net._saf_root_ctx = ctx
    net._saf_swapped = swapped
    _invalidate_reset_cache(net)


def _swap_layer(module: nn.Module, path: str, spec: Optional[Spec], ctx: SAFContext) -> None:
    module.__class__ = _layer_class(type(module), spec)
    module._saf_ctx, module._saf_path, module._saf_spec = ctx, path, spec
    module._saf_split = next(module.children(), None) is None  # leaves only: see saf_layer_forward


def _revert(net: nn.Module) -> None:
    swapped = net.__dict__.pop("_saf_swapped", None)
    net.__dict__.pop("_saf_root_ctx", None)
    if not swapped:
        return
    for module in swapped:
        spec = module._saf_spec
        if spec is not None and spec.role == "neuron":
            spec.neuron.detach(module)
        module.__class__ = type(module)._saf_base
        for name in [n for n in module.__dict__ if n.startswith("_saf_")]:
            del module.__dict__[name]
    _invalidate_reset_cache(net)
