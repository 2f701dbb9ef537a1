"""Teaching SAF about your own modules: ``register_neuron``, ``register_per_step``,
``register_linear``. See docs/extending.md.

A module SAF does not know by class is judged by the operations its forward runs (always
exact: what SAF cannot see into runs per step). Registering says more:

- ``register_linear(cls)``: the module is a linear map; its forward runs once per step on
  accumulations (SAF's saving), its constant scaled by c[t] (:mod:`saf_plugin.registry`).
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
from .neuron_step import NeuronParams
from .registry import NeuronAdapter, Spec, load_adapters, register, register_linear

__all__ = ["register_neuron", "register_per_step", "register_linear"]

Decay = Union[float, Callable[[nn.Module], float]]


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
    load_adapters()
    decay_of = decay if callable(decay) else (lambda m, v=float(decay): v)
    sj = _spikingjelly_memory_module(cls)
    if lif is not None and sj is None:
        raise TypeError("register_neuron(..., lif=...) needs a SpikingJelly MemoryModule "
                        "subclass (its memories and reset_net mark the sequences); register a "
                        "plain module without lif (it then runs per step)")
    sn = _snntorch_neuron(cls)
    if sn is not None and lif is None:
        adapter = NeuronAdapter(
            saf_class=sn.per_step_class, attach=sn.attach, detach=sn.detach, decay=decay_of,
            is_fresh=sn.is_fresh, reset_on_shape_change=True, closed_form=lambda m: False)
        judge = sn.judge_per_step
    elif sj is not None:
        adapter = NeuronAdapter(
            saf_class=sj.saf_class, attach=sj.attach, detach=sj.detach, decay=decay_of,
            is_fresh=sj.is_fresh, closed_form=lambda m: lif is not None,
            params=None if lif is None else (lambda m: _params(lif(m))))
        judge = sj.judge_neuron if lif is None else _judge_closed
    else:
        names = tuple(state)
        adapter = NeuronAdapter(
            saf_class=lambda c: _classes.make("neuron", c, {
                "forward": _plain_forward, "_call_impl": neuron_step.call_with_real_input}),
            attach=lambda m: None, detach=lambda m: None, decay=decay_of,
            is_fresh=lambda m: not any(torch.is_tensor(getattr(m, n, None)) for n in names),
            closed_form=lambda m: False, state=names)
        judge = _judge_per_step
    register(cls, Spec("neuron", judge=judge, neuron=adapter, dynamics=()))


def _snntorch_neuron(cls: type):
    import sys

    neurons = sys.modules.get("snntorch._neurons.neurons")
    if neurons is None or not issubclass(cls, neurons.SpikingNeuron):
        return None
    from .adapters import snntorch

    return snntorch


def _spikingjelly_memory_module(cls: type):
    import sys

    base = sys.modules.get("spikingjelly.activation_based.base")
    if base is None or not issubclass(cls, base.MemoryModule):
        return None
    from .adapters import spikingjelly

    return spikingjelly


def _params(p: dict) -> NeuronParams:
    return NeuronParams(float(p["decay"]), None, float(p["threshold"]), p.get("input_scale"),
                        p["surrogate"])


def _judge_closed(m: nn.Module):
    return ("exact", "closed form (registered LIF parameters)", "")


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
