"""Training loops for models switched to SAF (and, for comparison, plain BPTT).

``train_step`` runs one sequence ``x_seq`` of shape [T, B, ...] (time first) through a
SpikingJelly or snnTorch model and backpropagates the way the model's SAF mode asks
(``docs/theory.md``, "SAF-E and Theorem 1" and "SAF-F and Theorem 2"):

- SAF-E (``set_saf(net, "E")``): a loss at every step, L = Σ_t loss_fn(o[t], target[t]).
  In step mode 's' (and for snnTorch) each step runs forward and backward on its own, so
  memory is flat in T. ``online=True`` steps the optimizer after every step (OTTT_O);
  otherwise gradients accumulate and the optimizer steps once per sequence (OTTT_A).
  In step mode 'm' the whole sequence runs at once and one backward follows (each step's
  graph still stands alone, but all T of them are alive together).
- SAF-F (``set_saf(net, "F")``): steps 0..T−2 run without autograd; the loss is taken once,
  on the spike representation at the final step, L = loss_fn(r[T−1], target[T−1]).
- No SAF (``saf_mode(net) is None``): BPTT, L = Σ_t loss_fn(o[t], target[t]), one backward.

``net`` may be a ``DistributedDataParallel`` wrapper of a SAF model (one process per device,
e.g. under torchrun): pass the wrapper, it runs every step. SAF-E's per-step backward then
runs under ``net.no_sync()`` for steps 0..T−2, so gradients accumulate locally and are
all-reduced once per sequence, by the last step's backward; with ``online=True`` every step's
backward all-reduces, since the optimizer steps after each. SAF-F and step mode 'm' have one
backward per sequence anyway, so one all-reduce. In a loop of one's own::

    for t in range(T):  # SAF-E, one optimizer step per sequence
        with ddp.no_sync() if t < T - 1 else contextlib.nullcontext():
            loss_fn(ddp(x_seq[t]), target).backward()
    optimizer.step()

Refused under DDP: ``static_graph=True`` with that ``no_sync()`` (torch fails inside), and
``broadcast_buffers=True`` when a forward follows a synchronising one within a sequence
(``online=True``, BPTT step by step) on a model whose neurons keep their state in buffers
(snnTorch): process 0's state would overwrite the others'. DDP's broadcast of buffers
(BatchNorm statistics) does not touch SAF's own per-sequence state, which is not in buffers.

``train_epoch`` wraps it over a DataLoader with a tqdm bar and reports loss, accuracy,
seconds and peak memory. :class:`SavedTensorMeter` counts the bytes autograd keeps for
backward (``torch.autograd.graph.saved_tensors_hooks``); ``saf bench`` and the demo measure
memory with it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .converted import saf_mode
from .memory import SavedTensorMeter, peak_rss_bytes  # noqa: F401 (public here too)
from .errors import SAFStateError
from .modes import Mode, keeps_graph
from .registry import keeps_state_in_buffers, model_step_mode, reset_model, step_mode_advice

__all__ = ["train_step", "train_epoch", "prediction", "EpochStats", "SavedTensorMeter"]

LossFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- state


def reset_state(net: nn.Module) -> None:
    """Reset every neuron's state in ``net`` through its library's own mechanism (SpikingJelly's
    ``functional.reset_net``, snnTorch's ``reset_mem()`` of each neuron in ``net``), which
    starts a new sequence under SAF too."""
    reset_model(net)


def _unwrap(net: nn.Module) -> nn.Module:
    """The model a DistributedDataParallel or ``torch.compile`` wrapper holds (``ddp.module``,
    ``compiled._orig_mod``), else ``net``."""
    if isinstance(net, DistributedDataParallel) and "_saf_rt" not in net.__dict__:
        return _unwrap(net.module)
    inner = net.__dict__.get("_modules", {}).get("_orig_mod")
    if inner is not None and type(net).__name__ == "OptimizedModule":
        return _unwrap(inner)
    return net


def _no_sync(net: nn.Module, skip: bool):
    """``net.no_sync()`` for a DistributedDataParallel ``net`` when ``skip``: the backward inside
    accumulates gradients locally; the first backward outside all-reduces them."""
    if skip and isinstance(net, DistributedDataParallel):
        return net.no_sync()
    return contextlib.nullcontext()


def _buffer_states(net: nn.Module) -> list[str]:
    """Paths of the neurons that keep their state in buffers (snnTorch's ``mem``, ``syn``...)."""
    return [p or "<root>" for p, m in net.named_modules() if keeps_state_in_buffers(m)]


def _check_ddp(ddp: DistributedDataParallel, model: nn.Module, *, no_sync: bool,
               sync_every_step: bool) -> None:
    """Refuse the DistributedDataParallel settings under which a sequence would fail or train
    wrongly: ``no_sync``: steps 0..T−2 run under ``ddp.no_sync()``; ``sync_every_step``: every
    step's forward follows a synchronising one."""
    if no_sync and ddp.static_graph:
        raise SAFStateError(
            "DistributedDataParallel(static_graph=True) fails inside torch when gradients are "
            "accumulated under no_sync(), which SAF-E uses to all-reduce once per sequence: wrap "
            "the model without static_graph, or train with online=True")
    paths = _buffer_states(model) if sync_every_step and ddp.broadcast_buffers else []
    if paths:
        raise SAFStateError(
            f"{', '.join(paths)}: these neurons keep their state in buffers, and "
            "DistributedDataParallel(broadcast_buffers=True) copies process 0's buffers into "
            "every process before a forward that follows a synchronising one: the other "
            "processes would continue the sequence from process 0's state. Wrap the model with "
            "DistributedDataParallel(model, broadcast_buffers=False)")


def _first(y):
    """The output of a model step: the first element of a tuple (snnTorch returns (spk, mem))."""
    return y[0] if isinstance(y, (tuple, list)) else y


def _keep(outs: Optional[Tensor], t: int, T: int, y: Tensor) -> Tensor:
    """Copy step t's output into one [T, ...] buffer, allocated at the first step.

    Keeping each step's small output as a tensor of its own (and stacking at the end) left
    one small allocation per step between the step's large temporaries, which pinned about
    60-90 KB of heap per step (glibc fragmentation): a SAF-E iteration's resident memory grew
    with T although nothing else did."""
    if outs is None:
        outs = y.new_empty((T, *y.shape))
    outs[t] = y.detach()
    return outs


# --------------------------------------------------------------------------- one sequence


def train_step(
    net: nn.Module,
    x_seq: Tensor,
    target: Tensor,
    loss_fn: LossFn,
    optimizer: Optional[torch.optim.Optimizer] = None,
    *,
    online: bool = False,
    per_step_target: bool = False,
    reset: bool = True,
) -> tuple[Tensor, Tensor]:
    """Train on one sequence; return ``(loss, out_seq)``, both detached.

    ``x_seq``: [T, B, ...]. ``target``: the target of every step (e.g. class indices [B]),
    or with ``per_step_target=True`` one per step, [T, ...]. ``loss_fn(out, target)`` gives
    a scalar. ``out_seq`` is [T, B, ...]: o[t] under SAF-E and BPTT, the spike representation
    r[t] under SAF-F. ``loss`` is what was backpropagated (see the module docstring).

    With ``optimizer=None`` gradients are only accumulated into ``.grad`` (the caller zeroes
    and steps); with an optimizer, ``zero_grad`` is called first and ``step`` after the
    sequence (``online=False``) or after every step (``online=True``, SAF-E only).
    The model's state is reset before the sequence (``reset=False`` continues it).
    ``online=True`` needs step mode 's' (in step mode 'm' the sequence is one call).

    ``net`` may be ``DistributedDataParallel(model)``: memory stays flat in T as without it,
    and gradients are all-reduced once per sequence (``online=True``: once per step); see the
    module docstring.
    """
    if x_seq.dim() < 2:
        raise ValueError(f"x_seq must be time-first [T, B, ...]; got shape {tuple(x_seq.shape)}")
    model = _unwrap(net)  # net is what runs: a DistributedDataParallel wrapper stays in charge
    mode = saf_mode(model)
    step_mode = _check_options(net, model, mode, x_seq, target, optimizer, online=online,
                               per_step_target=per_step_target)
    if reset:
        reset_state(model)
    if optimizer is not None:
        optimizer.zero_grad()
    target_at = (lambda t: target[t]) if per_step_target else (lambda t: target)
    if mode == Mode.F:
        return _sequence_f(net, x_seq, target_at, loss_fn, optimizer, step_mode)
    if mode == Mode.E and step_mode == "s":
        return _sequence_e_per_step(net, model, x_seq, target_at, loss_fn, optimizer, online)
    return _sequence_whole(net, x_seq, target_at, loss_fn, optimizer, step_mode)


def _check_options(net: nn.Module, model: nn.Module, mode, x_seq: Tensor, target: Tensor,
                   optimizer, *, online: bool, per_step_target: bool) -> str:
    """Refuse what :func:`train_step` cannot do with these arguments; returns the model's step
    mode."""
    T = x_seq.shape[0]
    if T == 0:
        raise ValueError("x_seq holds no time step (T = 0); train_step needs at least one")
    if per_step_target and target.shape[0] != T:
        raise ValueError(f"per_step_target=True needs target [T={T}, ...]; got {tuple(target.shape)}")
    if online and optimizer is None:
        raise ValueError("online=True steps the optimizer every time step: pass an optimizer")
    if online and mode != Mode.E:
        raise SAFStateError(f"online=True needs SAF-E (set_saf(net, 'E')); the model is in "
                            f"mode {mode!r}")
    step_mode = model_step_mode(model.modules())
    if online and step_mode == "m":
        raise SAFStateError("online=True steps the optimizer after every time step, but in step "
                            "mode 'm' the whole sequence is one call: switch the model to step "
                            f"mode 's' ({step_mode_advice(repr('s'))}) before set_saf")
    if isinstance(net, DistributedDataParallel):
        per_step = step_mode == "s" and T > 1
        _check_ddp(net, model, no_sync=mode == Mode.E and per_step and not online,
                   sync_every_step=per_step and (online or mode is None))
    return step_mode


def _sequence_f(net, x_seq, target_at, loss_fn, optimizer, step_mode):
    """SAF-F: steps 0..T−2 without a graph, the loss on the last step's spike representation,
    one backward."""
    T = x_seq.shape[0]
    tgt = target_at(T - 1)
    if step_mode == "m":
        out = _first(net(x_seq))
        loss = loss_fn(out[-1], tgt)
        loss.backward()
        outs = out.detach()
    else:
        outs = None
        for t in range(T):
            with torch.set_grad_enabled(keeps_graph(Mode.F, t, T)):
                y = _first(net(x_seq[t]))
            outs = _keep(outs, t, T, y if t == T - 1 else y.detach())
        loss = loss_fn(y, tgt)
        loss.backward()
    if optimizer is not None:
        optimizer.step()
    return loss.detach(), outs


def _sequence_e_per_step(net, model, x_seq, target_at, loss_fn, optimizer, online):
    """SAF-E in step mode 's': forward and backward at every step (memory flat in T); the
    optimizer steps after every step (``online``) or once per sequence."""
    T = x_seq.shape[0]
    total = x_seq.new_zeros(())
    outs = None
    rt = model.__dict__["_saf_rt"]
    if online and rt.on_weight_change == "warn":  # the update at every step is asked for:
        rt.on_weight_change = "accept"             # SAF-E's online semantics (OTTT_O)
    for t in range(T):
        if online and t > 0:
            optimizer.zero_grad()
        # one update per sequence: DistributedDataParallel all-reduces once, at the last step
        with _no_sync(net, not online and t < T - 1):
            y = _first(net(x_seq[t]))
            loss = loss_fn(y, target_at(t))
            loss.backward()
        if online:
            optimizer.step()
        total += loss.detach()
        outs = _keep(outs, t, T, y)
    if optimizer is not None and not online:
        optimizer.step()
    return total, outs


def _sequence_whole(net, x_seq, target_at, loss_fn, optimizer, step_mode):
    """SAF-E in step mode 'm', or BPTT (no SAF): the whole sequence, one backward."""
    T = x_seq.shape[0]
    if step_mode == "m":
        out = _first(net(x_seq))
    else:
        out = torch.stack([_first(net(x_seq[t])) for t in range(T)])
    loss = sum(loss_fn(out[t], target_at(t)) for t in range(T))
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    return loss.detach(), out.detach()


# --------------------------------------------------------------------------- an epoch


@dataclass
class EpochStats:
    """What :func:`train_epoch` reports: mean loss per sequence, accuracy in [0, 1], wall
    seconds, and peak memory in bytes (``torch.cuda.max_memory_allocated`` on CUDA, else the
    process's peak resident set size, which never decreases)."""

    loss: float
    accuracy: float
    seconds: float
    peak_memory: int


def prediction(out_seq: Tensor, mode: Optional[str]) -> Tensor:
    """Class scores [B, C] from an output sequence [T, B, C]: the spike representation at
    the last step (SAF-F), else Σ_t o[t]."""
    return out_seq[-1] if mode == Mode.F else out_seq.sum(0)


def train_epoch(
    net: nn.Module,
    loader: Iterable,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    *,
    T: Optional[int] = None,
    online: bool = False,
    device: Optional[torch.device | str] = None,
    progress: bool = True,
    desc: str = "train",
) -> EpochStats:
    """One epoch of :func:`train_step` over ``loader``, which yields ``(x, y)`` with class
    indices ``y`` [B].

    ``x`` is [B, T, ...] (sequences, batch first as DataLoaders give them), or with ``T``
    given a static [B, ...] repeated T times (direct encoding, as OTTT's CIFAR setup).
    """
    from tqdm.auto import tqdm

    dev = torch.device(device) if device is not None else None
    cuda = dev is not None and dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    net.train()
    mode = saf_mode(net)
    n = correct = 0
    total_loss = 0.0
    batches = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False)
    for x, y in bar:
        if dev is not None:
            x, y = x.to(dev), y.to(dev)
        x_seq = x.unsqueeze(0).expand(T, *x.shape) if T is not None else x.transpose(0, 1)
        loss, out = train_step(net, x_seq, y, loss_fn, optimizer, online=online)
        total_loss += float(loss)
        batches += 1
        correct += int((prediction(out, mode).argmax(-1) == y).sum())
        n += y.shape[0]
        bar.set_postfix(loss=f"{total_loss / batches:.4f}", acc=f"{correct / max(n, 1):.3f}")
    if cuda:
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(dev) if cuda else peak_rss_bytes()
    return EpochStats(total_loss / max(batches, 1), correct / max(n, 1), seconds, int(peak))
