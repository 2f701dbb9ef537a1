"""Teaching SAF about your own modules: ``register_neuron``, ``register_per_step``,
``register_linear`` (the three public ``register_*`` functions live here). See
docs/extending.md.

A module SAF does not know by class is judged by the operations its forward runs (always
exact: what SAF cannot see into runs per step). Registering says more:

- ``register_linear(cls)``: the module is a linear map; its forward runs once per step on
  accumulations (SAF's saving), its constant scaled by c[t].
- ``register_per_step(cls)``: the module's forward runs once per step on the real per-step
  values, as one operation (for forwards SAF must not look into: ``.item()``, custom autograd
  functions, C++ extensions).
- ``register_neuron(cls, ...)``: the module is a neuron with state: it runs per step on its
  de-accumulated input current with its state detached before every step (OTTT's rule), or,
  given its LIF parameters, SAF's closed form.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import _classes, neuron_step
from .registry import NeuronFunctions, Spec, libraries, register

__all__ = ["register_neuron", "register_per_step", "register_linear"]

Decay = Union[float, Callable[[nn.Module], float]]


def register_linear(
    cls: type, shift: Optional[Callable[[nn.Module, Tensor, int], Optional[Tensor]]] = None
) -> None:
    """Declare ``cls`` a linear map, so that its forward runs once per step on accumulations.

    Without this a module is judged by the operations its forward runs, which is always exact
    (an operation SAF does not know runs per step); declaring it saves that per-step work when
    the module calls something SAF cannot see into (e.g. a custom autograd function). If it
    adds a constant, pass ``shift(module, out, sample_ndim)`` returning that constant
    broadcastable against one sample's output (``sample_ndim`` dims); SAF scales it by c[t].
    """
    register(cls, Spec("linear", shift=shift, whole=True))


def register_per_step(cls: type) -> None:
    """Declare ``cls`` a per-step operation: its whole forward runs once per step on the
    per-step values of its tensor arguments (accumulations are de-accumulated first), and its
    outputs are per-step values. Exact for any forward; costs element-wise work per step."""
    register(cls, Spec("nonlinear", whole=True))


def register_neuron(cls: type, *, decay: Decay = 1.0, state: Sequence[str] = ("v",),
                    lif: Optional[Callable[[nn.Module], dict]] = None) -> None:
    """Declare ``cls`` a spiking neuron.

    Per step (the default): ``forward(x, *args)`` must run ONE time step on the input current
    ``x`` [B, ...] and return its output (spikes; any tensors). Under SAF it gets the per-step
    input current I[t] (de-accumulated from the linear maps before it, which still run once per
    step on accumulations), with its state detached before every step, so its outputs are the
    plain module's and its gradient is OTTT's instantaneous one, generalised to your dynamics.

    decay: λ of the trace the weights feeding the neuron see (their gradient is
        Σ_t δ[t] â[t]ᵀ, â[t] = λ â[t−1] + s[t]): the neuron's leak (1 − 1/τ); a float or a
        function of the module.
    state: the attributes that hold the neuron's state (detached before every step). For a
        plain ``nn.Module`` the neuron counts as reset (a new sequence starts) when none of
        them holds a tensor, so its own reset must set them to None or a number. A SpikingJelly
        ``MemoryModule`` uses its memories and ``functional.reset_net`` instead, an snnTorch
        ``SpikingNeuron`` its hidden states (mem, syn, spk) and ``utils.reset``/``reset_mem``.
    lif: SpikingJelly ``MemoryModule`` subclasses only: a function of the module returning its
        soft-reset LIF parameters ``dict(decay=λ, threshold=θ, input_scale=None or 1 − λ,
        surrogate=fn)``; the neuron then runs SAF's closed form (SAF-F too) instead of its
        forward, which must be u[t] = λ (u[t−1] − θ s[t−1]) + scale·I[t], s[t] = H(u[t] − θ).
    """
    decay_of = decay if callable(decay) else (lambda m, v=float(decay): v)
    found = next((f for f in (lib.neuron_adapter(cls, decay_of, lif) for lib in libraries())
                  if f is not None), None)
    if found is None and lif is not None:
        raise TypeError("register_neuron(..., lif=...) needs a SpikingJelly MemoryModule "
                        "subclass (its memories and reset_net mark the sequences); register a "
                        "plain module without lif (it then runs per step)")
    if found is not None:
        adapter, judge = found
    else:
        names = tuple(state)
        adapter = NeuronFunctions(
            saf_class=lambda c: _classes.make("neuron", c, {
                "forward": _plain_forward, "_call_impl": neuron_step.call_with_real_input}),
            attach=lambda m: None, detach=lambda m: None, decay=decay_of,
            is_fresh=lambda m: not any(torch.is_tensor(getattr(m, n, None)) for n in names),
            closed_form=lambda m: False, state=names)
        judge = _judge_per_step
    register(cls, Spec("neuron", judge=judge, neuron=adapter, dynamics=()))


def _judge_per_step(m: nn.Module):
    return ("exact", f"per step: {type(m).__name__}'s own step on the de-accumulated input "
            "current, its state detached (SAF-E only)", "")


def _plain_forward(self, x: Tensor, *args, **kwargs):
    rt = neuron_step.runtime_of(self)
    adapter = self._saf_spec.neuron
    forward = type(self)._saf_base.forward

    def one_step(current):  # step mode 'm': current is [1, B, ...], forward takes [B, ...]
        _detach(self, adapter.state)
        if rt.step_mode == "s":
            return forward(self, current, *args, **kwargs)
        return _unsqueeze(forward(self, current[0], *args, **kwargs))

    out = neuron_step.per_step(rt, self, x, adapter.lam(self), one_step)
    _detach(self, adapter.state)
    return out


def _detach(m: nn.Module, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(m, name, None)
        if torch.is_tensor(value) and value.requires_grad:
            setattr(m, name, value.detach())


def _unsqueeze(out):
    if torch.is_tensor(out):
        return out.unsqueeze(0)
    if isinstance(out, (tuple, list)):
        return type(out)(_unsqueeze(o) for o in out)
    return out
