"""The two routes of a SAF neuron: the closed form and the per-step route.

Closed form (soft-reset LIF/IF/PLIF: :func:`forward` and :func:`step`; snnTorch ``Leaky``, which
also returns its membrane: :func:`step_with_membrane`): the runtime (:mod:`saf_plugin.runtime`)
hands over the input current as an accumulation Y (with the decay it was accumulated with) and
the neuron fires from Y and its own spike accumulation alone; the maths is
:mod:`saf_plugin.core` (step mode 's') or the scan of :mod:`saf_plugin.kernels` (step mode
'm'). Adapters read the neuron's parameters (:class:`NeuronParams`); the state of a sequence is
one :class:`NeuronState` per neuron, kept by the runtime.

Per step (:func:`per_step`; every other neuron): the input current is de-accumulated,
I[t] = Y[t] − λ Y[t−1], and the neuron's own one-step function runs on it with its state
detached (OTTT's rule), so its forward is the library's neuron and the linear maps before it
still run once per step on accumulations. See docs/theory.md ("Neurons without a closed form").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from . import core
from .errors import SAFStateError
from .modes import Mode, keeps_graph


@dataclass
class NeuronParams:
    """What a closed-form neuron is, read by its adapter from the module.

    decay λ (a float), its learnable form (a tensor with grad, or None), threshold θ (a float,
    or snnTorch's threshold tensor), the input scale (1 − λ with SpikingJelly's
    ``decay_input``, else None), the surrogate, and the scan backend of
    :mod:`saf_plugin.kernels` for step mode 'm'. A neuron that keeps its membrane (snnTorch
    ``Leaky``, :func:`step_with_membrane`) also gives its reset: κ, the factor of â[t−1] in
    the reset term (1 with ``reset_delay``, λ without, 0 for no reset), whether it resets at
    all, ``reset_delay`` and the graded-spike factor g (None: 1).
    """

    decay: float
    decay_param: Optional[Tensor]
    theta: Union[float, Tensor]
    input_scale: Optional[float]
    surrogate: Callable[[Tensor], Tensor]
    backend: str = "auto"
    reset_decay: Optional[float] = None
    resets: bool = True
    reset_delay: bool = True
    graded: Optional[Tensor] = None

    @property
    def decay_input(self) -> bool:
        return self.input_scale is not None


@dataclass
class NeuronState:
    """A closed-form neuron's state in a sequence: â[t−1] (``acc``); the accumulated per-step
    input current (``cur_acc``); for re-accumulation and a learnable decay the last input
    z[t−1] and Y[t−1]; with graded spikes their accumulation ô[t−1] (``out``); the
    membrane the neuron returned last step (``mem_out``, with graph); the dtype it returns
    spikes and membrane in (``dtype``: the model's under ``accumulate``, set by the runtime's
    ``neuron_input``; None: that of the accumulations); and what the membrane is read from
    (:func:`membrane`): the drive ρ Y[t] of the last call and the accumulations â of its
    steps (``drive``, ``accs``; [T, ...] in step mode 'm', with ``drive_scale`` ρ applied
    lazily there)."""

    acc: Optional[Tensor] = None
    cur_acc: Optional[Tensor] = None
    z_prev: Optional[Tensor] = None
    y_prev: Optional[Tensor] = None
    out: Optional[Tensor] = None
    mem_out: Optional[Tensor] = None
    dtype: Optional[torch.dtype] = None
    drive: Optional[Tensor] = None
    drive_scale: Optional[float] = None
    accs: Optional[Tensor] = None
    since: int = 0  # the sequence step this neuron's state started at (reset mid-sequence: > 0)
    mem_ref: Optional[Tensor] = None  # snnTorch, an explicit membrane chain: mem[t], detached


def membrane(st: NeuronState, theta: float, detach_reset: bool, multi: bool,
             seq: bool = False) -> Tensor:
    """The membrane after reset a soft-reset LIF holds after its last step, from what SAF
    keeps: v[t] = u[t] − θ s[t] = ρ Y[t] − θ â[t] (u[t] = ρ Y[t] − θ λ â[t−1]; docs/theory.md,
    "Reading a neuron's state"). ``multi``: the last call was in step mode 'm' ([T, ...]);
    then ``seq`` gives all its steps, else the last one. With ``detach_reset`` the reset
    carries no gradient, as in SpikingJelly."""
    drive, acc = st.drive, st.accs
    if multi and not seq:
        drive, acc = drive[-1], acc[-1]
    if st.drive_scale is not None:  # step mode 'm': ρ Y[t] was not materialised
        drive = drive * st.drive_scale
    if detach_reset:
        acc = acc.detach()
    return drive - theta * acc.to(drive.dtype)


def step(x: Tensor, decay_in: float, st: NeuronState, p: NeuronParams, mode: str,
         c: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """One SAF step on the input accumulation ``x`` (accumulated with ``decay_in``); updates
    ``st`` in place and returns (â[t], s[t]) with graph (s[t] is None in SAF-F).

    With a fixed decay and the input accumulated with it, one fused operation of
    :func:`saf_plugin.kernels.step`: the arithmetic below, bit for bit on CPU (on CUDA the
    Triton surrogate derivative agrees to float rounding)."""
    if p.decay_param is None and decay_in == p.decay and st.z_prev is None:
        from . import kernels

        acc, spikes = kernels.step(x, st.acc, lam=p.decay, theta=p.theta,
                                   input_scale=p.input_scale, surrogate=p.surrogate, mode=mode,
                                   c=c, backend=p.backend)
        st.acc = acc.detach()
        st.drive, st.drive_scale = x, p.input_scale  # (the membrane, when read: ρ Y − θ â)
        return acc, spikes
    y = x
    if p.decay_param is not None or decay_in != p.decay:
        y = core.reaccumulate_step(x, st.z_prev, st.y_prev, decay_in, p.decay)
        st.z_prev = x.detach()
    scaled = y * p.input_scale if p.decay_input else y
    if p.decay_param is not None:
        term = core.decay_gradient_term(y, st.y_prev, st.acc, p.theta, p.decay_input)
        scaled = scaled + (p.decay_param - p.decay) * term
        st.y_prev = y.detach()
    elif st.z_prev is not None:
        st.y_prev = y.detach()
    spikes = None
    st.drive, st.drive_scale = scaled, None
    if mode == Mode.F:
        acc, _ = core.saf_f_step(scaled, st.acc, p.decay, p.theta, c)
    else:
        spikes, _ = core.lif_spike(scaled, st.acc, p.decay, p.theta, p.surrogate)
        spikes = spikes.to(scaled.dtype)  # (a surrogate may return float32: â keeps y's dtype)
        acc = core.accumulate_step(spikes, st.acc, p.decay)
    st.acc = acc.detach()
    return acc, spikes


def step_with_membrane(x: Tensor, decay_in: float, st: NeuronState, p: NeuronParams, mode: str,
                       c: Optional[Tensor], mem_prev: Optional[Tensor]):
    """One SAF step of a neuron that keeps its membrane (snnTorch ``Leaky``, see
    ``saf_plugin/adapters/snntorch.py`` for its equations): ``mem_prev`` is mem[t−1] (None at
    t = 0), θ a tensor (learnable or not). Updates ``st``; returns (ô[t], g s[t], mem[t]), all
    with graph (ô = â when g = 1)."""
    lam, theta = p.decay, p.theta
    theta_d = theta.detach()
    spike_fn = p.surrogate
    y = x  # input accumulated with the sender's decay -> with this neuron's
    if mem_prev is None:  # step 0: Y[0] = I[0] whatever the decays
        st.z_prev = st.y_prev = x.detach()
    elif decay_in != lam:
        y = core.reaccumulate_step(x, st.z_prev, st.y_prev, decay_in, lam)
        st.z_prev, st.y_prev = x.detach(), y.detach()
    if p.decay_param is not None and mem_prev is not None:  # ∂mem[t]/∂β = mem[t−1]
        y = y + (p.decay_param - lam) * core.decay_gradient_term(
            y, None, None, theta_d, False, membrane=mem_prev)
    kappa = p.reset_decay
    r = None  # reset_delay=False: the reset r[t] = H(mem[t−1] − θ) not yet applied
    if p.resets and not p.reset_delay and mem_prev is not None:
        r = spike_fn(mem_prev.detach() - theta_d).detach()
    need_r_t = theta.requires_grad and p.resets and mem_prev is not None
    r_t = r if (r is not None or not need_r_t) else spike_fn(mem_prev.detach() - theta_d).detach()
    yy = y if r is None else y - theta * r
    if need_r_t:  # snnTorch's per-step ∂mem/∂θ is −r[t]; SAF's reset term gives −(κ â + r)
        extra = kappa * st.acc + (0.0 if r is None else r) - r_t
        yy = yy + (theta - theta_d) * extra
    th = theta if theta.requires_grad else theta_d
    if mode == Mode.F:
        with torch.no_grad():
            s, u = core.lif_spike(yy, st.acc, lam, th, spike_fn, reset_decay=kappa)
        rep = core.spike_representation(y, th, c)
        s = s + (rep - rep.detach())
        mem_new = u.detach() + (y - y.detach())
    else:
        s, u = core.lif_spike(yy, st.acc, lam, th, spike_fn, reset_decay=kappa)
        mem_new = u
    s = s.to(y.dtype)  # (snnTorch's surrogates return float32: â keeps y's dtype)
    if p.resets and not p.reset_delay:
        mem_new = mem_new - (s - (0.0 if r is None else r)) * theta
    acc = core.accumulate_step(s, None if st.acc is None else st.acc.detach(), lam)
    st.acc = acc.detach()
    out, spk = acc, s
    if p.graded is not None:
        spk = s * p.graded
        out = core.accumulate_step(spk, st.out, lam)
        st.out = out.detach()
    if st.dtype is not None:
        spk, mem_new = spk.to(st.dtype), mem_new.to(st.dtype)
    return out, spk, mem_new


class _Spikes(torch.autograd.Function):
    """s[t] = round(â[t] − λ â[t−1]) over [T, ...] (the exact 0/1 the neuron fired), with the
    gradient of â[t] (â[t−1] is a constant): ∂s[t]/∂â[t] = 1. Two passes, no graph of its own."""

    @staticmethod
    def forward(ctx, acc: Tensor, acc_prev: Optional[Tensor], lam: float) -> Tensor:
        out = torch.empty_like(acc)
        if acc_prev is None:
            out[0] = acc[0]
        else:
            torch.sub(acc[0], acc_prev, alpha=lam, out=out[0])
        torch.sub(acc[1:], acc[:-1], alpha=lam, out=out[1:])
        return out.round_()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None


class _Spike(torch.autograd.Function):
    """:class:`_Spikes` for one step, [B, ...] (step mode 's'): the same operations on the
    same elements, without the time axis (no unsqueeze/squeeze, no empty slices)."""

    @staticmethod
    def forward(ctx, acc: Tensor, acc_prev: Optional[Tensor], lam: float) -> Tensor:
        return _spike(acc, acc_prev, lam)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None


def _spike(acc: Tensor, acc_prev: Optional[Tensor], lam: float) -> Tensor:
    out = torch.empty_like(acc)  # (acc's memory layout, as _Spikes has it)
    if acc_prev is None:
        out.copy_(acc)
    else:
        torch.sub(acc, acc_prev, alpha=lam, out=out)
    return out.round_()


def spikes_of(acc: Tensor, acc_prev: Optional[Tensor], lam: float, multi_step: bool) -> Tensor:
    """s[t] = â[t] − λ â[t−1], rounded to the exact 0/1 the neuron fired (the gradient is that
    of â[t])."""
    prev = acc_prev
    if prev is not None:  # (â[t−1] is kept detached: no detach operation then)
        prev = (prev.detach() if prev.requires_grad else prev).to(acc.dtype)
    if multi_step:
        return _Spikes.apply(acc, prev, float(lam))
    if not (acc.requires_grad and torch.is_grad_enabled()):  # no graph to make (SAF-F's
        return _spike(acc, prev, float(lam))                  # steps before the last)
    return _Spike.apply(acc, prev, float(lam))


def forward(rt, module, x: Tensor, p: NeuronParams) -> Tensor:
    """A SAF neuron's forward in the runtime's step mode: x is [B, ...] or [T, B, ...].

    Returns the real spikes, tagged with their accumulation â for the layers downstream.
    """
    st = rt.slot(module, NeuronState)
    with rt.pausing():
        y, decay_in = rt.neuron_input(x, p.decay, st, module)
        mode = rt.mode
        c = None
        if mode == Mode.F:  # c[t] (step mode 's'), or c over the call's steps
            c = (rt.series_now(p.decay, like=y, since=st.since) if rt.step_mode == "s"
                 else rt.series(p.decay, like=y, since=st.since))
        prev = st.acc
        if rt.step_mode == "s":
            acc, spikes = step(y, decay_in, st, p, mode, c)
            if spikes is None:
                spikes = spikes_of(acc, prev, p.decay, False)
        elif p.decay_param is None and decay_in == p.decay and st.z_prev is None:
            st.drive, st.drive_scale = y, p.input_scale
            from . import kernels  # the 'm' scan: one dispatcher, core is its oracle

            acc, st.acc, spikes = kernels.scan(y, st.acc, lam=p.decay, theta=p.theta,
                                               input_scale=p.input_scale, surrogate=p.surrogate,
                                               mode=mode, c_last=None if c is None else c[-1],
                                               backend=p.backend, spikes=True)
            if spikes is None:  # the backend did not write them in its pass
                spikes = spikes_of(acc, prev, p.decay, True)
        else:
            steps, drives = [], []
            for t in range(y.shape[0]):
                grad = torch.is_grad_enabled() and keeps_graph(mode, t, y.shape[0])
                with torch.set_grad_enabled(grad):
                    steps.append(step(y[t], decay_in, st, p, mode,
                                      None if c is None else c[t])[0])
                drives.append(st.drive)
            acc = torch.stack(steps)
            st.drive, st.drive_scale = torch.stack(drives), None
            spikes = spikes_of(acc, prev, p.decay, True)
        st.accs = acc
        spikes = rt.low(spikes)  # (the model's dtype; â stays in the accumulation dtype)
    return rt.emit(spikes, acc, p.decay, st.since)


def call_with_real_input(self, *args, **kwargs):
    """``Module._call_impl`` of a SAF neuron: when hooks watch the call (forward pre-hooks,
    forward hooks: SpikingJelly's monitors), they and the neuron get its per-step input current
    I[t], as in the plain model, instead of the accumulation SAF passes between layers (the
    neuron accumulates it again; the values agree to float rounding)."""
    rt = self.__dict__.get("_saf_rt")
    if args and rt is not None and rt.active and not rt.paused and _watched(self):
        args = (rt.real_input(args[0]), *args[1:])
    return torch.nn.Module._call_impl(self, *args, **kwargs)


def _watched(m) -> bool:
    from torch.nn.modules import module as _m

    return bool(m._forward_pre_hooks or m._forward_hooks or _m._global_forward_pre_hooks
                or _m._global_forward_hooks)


def runtime_of(module):
    """The runtime of the converted model ``module`` belongs to, while that model runs."""
    rt = module.__dict__.get("_saf_rt")
    if rt is None or not rt.active:
        raise SAFStateError(
            f"{module._saf_path}: a neuron of a SAF model was called on its own; call the model "
            "(saf_plugin.set_saf(net, ...) converts the model you pass it)")
    return rt


def per_step(rt, module, x, lam: float, one_step: Callable[[Tensor], Any], whole: bool = False):
    """A neuron without a closed form: ``one_step(I)`` (the neuron's own dynamics for one step,
    its state detached before it runs) on the per-step input current I[t].

    x: [B, ...] in step mode 's'; [T, B, ...] in step mode 'm', where ``one_step`` gets one
    step at a time as a sequence of length 1, [1, B, ...] (the neuron's multi-step forward
    then runs as in the plain model). λ is the decay of the trace the weights feeding the neuron
    see. ``whole``: in step mode 'm' ``one_step`` gets the whole sequence once (a module whose
    forward is not a loop of single steps). Returns what ``one_step`` returns (concatenated over
    T in step mode 'm'), tagged as per-step values.
    """
    rt.slot(module, NeuronState)  # one call per step (a second call would share the state)
    with rt.pausing():
        current = rt.neuron_current(x, lam, module)
        if rt.step_mode == "s" or whole:
            out = one_step(current)
        else:
            out = _cat([one_step(current[t:t + 1]) for t in range(current.shape[0])])
    return rt.emit_steps(out, lam)


def _cat(outs: list):
    first = outs[0]
    if torch.is_tensor(first):
        return torch.cat(outs)
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([o[i] for o in outs]) for i in range(len(first)))
    return first
