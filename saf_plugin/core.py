"""The SAF math, once, in plain PyTorch. Adapters and kernels call these functions.

Notation (``docs/theory.md``, "The neuron" and "Spike accumulation and the SAF forward"):
a soft-reset LIF layer with decay ``lam`` (λ = 1 − 1/τ; λ = 1 for IF), threshold ``theta`` (θ)
and input current I[t] = W s_in[t] + b fires

    u[t] = λ (u[t−1] − θ s[t−1]) + I[t],        s[t] = H(u[t] − θ).

With the spike accumulation â[t] = λ â[t−1] + s[t] (â[−1] = 0) the recurrence unrolls to

    u[t] = Y[t] − θ λ â[t−1],     Y[t] = Σ_k λ^k I[t−k] = W â_in[t] + b c[t],
    c[t] = Σ_{k=0..t} λ^k,

so a layer needs ONE affine operation on the accumulated input per step.  ``decay_input``
(SpikingJelly) scales the input by (1 − λ): u[t] = (1 − λ) Y[t] − θ λ â[t−1].

Every function here takes and returns tensors; ``lam`` may be a float or a 0-d tensor
(a learnable decay is passed detached: its gradient enters through
:func:`decay_gradient_term`).
"""

from __future__ import annotations

import weakref
from typing import Callable, Optional, Union

import torch
from torch import Tensor

Lam = Union[float, Tensor]
Surrogate = Callable[[Tensor], Tensor]

__all__ = [
    "host_float",
    "accumulate_step",
    "accumulate",
    "deaccumulate_step",
    "deaccumulate",
    "bias_series",
    "series_value",
    "reaccumulate_step",
    "lif_spike",
    "spike_representation",
    "saf_e_step",
    "saf_f_step",
    "decay_gradient_term",
    "heaviside",
]


_HOST: dict[tuple, tuple] = {}


def host_float(t: Union[float, Tensor], read: Optional[Callable[[Tensor], Tensor]] = None) -> float:
    """``float(read(t))`` (``float(t)`` without ``read``), read from the device once per change
    of ``t``: cached by the tensor, its storage and its version counter, which every in-place
    update (an optimizer step, ``copy_``, ``load_state_dict``) advances. A learnable decay or
    threshold on CUDA then costs one device synchronisation per optimizer step, not one per
    neuron and time step. Not seen: an in-place change through ``t.data`` (``p.data.clamp_()``),
    which bypasses the version counter as it bypasses autograd (docs/faq.md).
    ``read`` must be a module-level function (it is part of the cache key)."""
    if not torch.is_tensor(t):
        return float(t if read is None else read(t))
    try:
        version = t._version
    except RuntimeError:  # an inference tensor has no version counter
        return float((t if read is None else read(t)).detach())
    key = (id(t), read)
    hit = _HOST.get(key)
    if hit is not None and hit[0]() is t and hit[1] == (version, t.data_ptr()):
        return hit[2]
    with torch.no_grad():
        value = float(t if read is None else read(t))
    if len(_HOST) > 4096:
        _HOST.clear()
    _HOST[key] = (weakref.ref(t), (version, t.data_ptr()), value)
    return value


def accumulate_step(x: Tensor, acc_prev: Optional[Tensor], lam: Lam) -> Tensor:
    """One step of the accumulation â[t] = λ â[t−1] + x[t]; ``acc_prev=None`` means t = 0."""
    return x if acc_prev is None else lam * acc_prev + x


def accumulate(x_seq: Tensor, lam: Lam, acc_prev: Optional[Tensor] = None) -> Tensor:
    """Accumulate a sequence ``x_seq`` of shape [T, ...] along dim 0; returns [T, ...]."""
    out = []
    acc = acc_prev
    for x in x_seq:
        acc = accumulate_step(x, acc, lam)
        out.append(acc)
    return torch.stack(out)


def deaccumulate_step(acc: Tensor, acc_prev: Optional[Tensor], lam: Lam) -> Tensor:
    """Undo one accumulation step: x[t] = â[t] − λ â[t−1] (â[t−1] detached: a constant)."""
    return acc if acc_prev is None else acc - lam * acc_prev.detach()


def deaccumulate(acc_seq: Tensor, lam: Lam, acc_prev: Optional[Tensor] = None) -> Tensor:
    """De-accumulate a sequence [T, ...]: x[t] = â[t] − λ â[t−1], each â[t−1] detached."""
    first = acc_seq[:1] if acc_prev is None else acc_seq[:1] - lam * acc_prev.detach()
    rest = acc_seq[1:] - lam * acc_seq[:-1].detach()
    return torch.cat([first, rest])


def bias_series(t0: int, steps: int, lam: Lam, *, like: Tensor) -> Tensor:
    """c[t] = Σ_{k=0..t} λ^k for t = t0 .. t0+steps−1, as a [steps] tensor like ``like``.

    Computed in double precision by the recurrence c[t] = λ c[t−1] + 1 (c[t] = t + 1 for λ = 1).
    """
    lam_f = float(lam.detach()) if torch.is_tensor(lam) else float(lam)
    c, out = 0.0, []
    for t in range(t0 + steps):
        c = lam_f * c + 1.0
        if t >= t0:
            out.append(c)
    return torch.tensor(out, dtype=like.dtype, device=like.device)


_SERIES: dict = {}


def series_value(lam: Lam, t: int) -> float:
    """c[t] = Σ_{k=0..t} λ^k as a Python number, by the recurrence of :func:`bias_series`
    (cached per λ)."""
    lam_f = float(lam.detach()) if torch.is_tensor(lam) else float(lam)
    values = _SERIES.get(lam_f)
    if values is None:
        if len(_SERIES) > 256:
            _SERIES.clear()
        values = _SERIES[lam_f] = [1.0]
    while len(values) <= t:
        values.append(lam_f * values[-1] + 1.0)
    return values[t]


def reaccumulate_step(
    z: Tensor, z_prev: Optional[Tensor], y_prev: Optional[Tensor], lam_in: Lam, lam_out: Lam
) -> Tensor:
    """Re-accumulate with another decay: ŷ[t] = λ' ŷ[t−1] + z[t] − λ z[t−1].

    If z[t] is a λ-accumulation of some x[t], ŷ[t] is its λ'-accumulation; linear maps
    commute with it, so a layer can re-accumulate its already transformed input.
    """
    if z_prev is None:
        return z
    # z + (λ' ŷ − λ z): exactly z when λ' = λ and ŷ[t−1] = z[t−1]
    return z + (lam_out * y_prev.detach() - lam_in * z_prev.detach())


def lif_spike(
    y: Tensor,
    acc_prev: Optional[Tensor],
    lam: Lam,
    theta: Union[float, Tensor],
    surrogate: Surrogate,
    *,
    reset_decay: Optional[Lam] = None,
) -> tuple[Tensor, Tensor]:
    """The spike and membrane of one SAF step: u[t] = Y[t] − θ κ â[t−1], s[t] = H(u[t] − θ).

    κ (``reset_decay``) is the factor of â[t−1] in the reset term: λ (the default; SpikingJelly,
    and snnTorch with ``reset_delay=False``), 1 (snnTorch's default ``reset_delay=True``, whose
    reset subtracts θ s[t−1] without the decay) or 0 (no reset). â[t−1] is detached.
    Returns (s[t], u[t]).
    """
    if acc_prev is None:
        u = y
    else:
        kappa = lam if reset_decay is None else reset_decay
        u = y - (theta * kappa) * acc_prev.detach()
    return surrogate(u - theta), u


def spike_representation(y: Tensor, theta: Union[float, Tensor], c: Union[float, Tensor]) -> Tensor:
    """The Spike Representation of a soft-reset LIF in accumulated units: min(max(Y, 0)/θ, c[t])."""
    rep = torch.clamp(y, min=0.0) / theta
    return torch.minimum(rep, torch.as_tensor(c, dtype=y.dtype, device=y.device))


def saf_e_step(
    y: Tensor,
    acc_prev: Optional[Tensor],
    lam: Lam,
    theta: float,
    surrogate: Surrogate,
    *,
    reset_decay: Optional[Lam] = None,
) -> tuple[Tensor, Tensor]:
    """SAF-E neuron step on the (scaled) accumulated input ``y`` = Y[t].

    u[t] = Y[t] − θ λ â[t−1];  s[t] = H(u[t] − θ) (surrogate in backward);
    â[t] = λ â[t−1] + s[t].  â[t−1] is a constant (detached), so the graph of step t
    stands alone.  ``reset_decay`` replaces the λ of the reset term (see :func:`lif_spike`).
    Returns (â[t], u[t]).
    """
    s, u = lif_spike(y, acc_prev, lam, theta, surrogate, reset_decay=reset_decay)
    return accumulate_step(s, None if acc_prev is None else acc_prev.detach(), lam), u


def saf_f_step(
    y: Tensor,
    acc_prev: Optional[Tensor],
    lam: Lam,
    theta: float,
    c: Union[float, Tensor],
    *,
    reset_decay: Optional[Lam] = None,
    spike_fn: Optional[Surrogate] = None,
) -> tuple[Tensor, Tensor]:
    """SAF-F neuron step: the same forward as :func:`saf_e_step`, the Spike Representation
    gradient in backward.

    In rate units a = â[t]/c[t], ȳ = Y[t]/c[t] the Spike Representation of a soft-reset LIF
    is a ≈ clamp(ȳ/θ, 0, 1), so the backward is dâ/dY = 1[0 < Y < θ c[t]] / θ (at the two
    ends, Y = 0 and Y = θ c[t] exactly, torch's clamp/minimum give 1/θ and 1/(2θ)).
    ``spike_fn`` is the forward Heaviside (default H(x) = [x >= 0]; snnTorch's surrogates use
    [x > 0]); ``reset_decay`` as in :func:`lif_spike`.  Returns (â[t], u[t]).
    """
    with torch.no_grad():
        acc, u = saf_e_step(y, acc_prev, lam, theta, spike_fn or heaviside,
                            reset_decay=reset_decay)
    rep = spike_representation(y, theta, c)
    return acc + (rep - rep.detach()), u


def decay_gradient_term(
    y: Tensor,
    y_prev: Optional[Tensor],
    acc_prev: Optional[Tensor],
    theta: Union[float, Tensor],
    decay_input: bool,
    *,
    membrane: Optional[Tensor] = None,
) -> Tensor:
    """∂u[t]/∂λ with the membrane u[t−1] held constant (the online, history-detached gradient).

    With v[t−1] the membrane carried into step t (after its reset) and Y the unscaled
    accumulated current:
      decay_input=False:  u = λ v[t−1] + I[t]          ->  ∂u/∂λ = v[t−1]        = Y[t−1] − θ â[t−1]
      decay_input=True:   u = λ v[t−1] + (1−λ) I[t]    ->  ∂u/∂λ = v[t−1] − I[t] = Y[t−1] − Y[t] − θ â[t−1]
    ``membrane``: v[t−1] where the neuron keeps it (snnTorch's mem), instead of reconstructing it
    from the accumulations (SpikingJelly's soft reset: v[t−1] = u[t−1] − θ s[t−1]).
    Returned detached; the caller adds (λ − λ.detach()) · term to u.
    """
    with torch.no_grad():
        if membrane is not None:
            assert not decay_input, "a kept membrane is snnTorch's (no decay_input)"
            return membrane.detach()
        if y_prev is None:
            return -y if decay_input else torch.zeros_like(y)
        term = y_prev - theta * acc_prev
        return term - y if decay_input else term


def heaviside(x: Tensor) -> Tensor:
    """H(x) = [x >= 0] in the dtype of x (SpikingJelly's convention; the forward of SAF-F)."""
    return (x >= 0).to(x.dtype)
