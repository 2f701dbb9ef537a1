"""The two written interfaces an adapter implements: :class:`LibraryAdapter` (what is particular
to one spiking-neural-network library) and :class:`NeuronAdapter` (how one family of neuron
classes becomes a SAF neuron and back).

The engine, ``set_saf``, ``check`` and the training loops never ask which library a model comes
from: they ask the adapters registered in :mod:`saf_plugin.registry`
(:func:`~saf_plugin.registry.register_library`, and ``Spec.neuron`` for each neuron class).
``saf_plugin/adapters/spikingjelly.py`` and ``saf_plugin/adapters/snntorch.py`` implement both;
:func:`saf_plugin.register_neuron` builds a :class:`NeuronAdapter` for a user's class.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence, runtime_checkable

from torch import nn

from .errors import Status

Judgement = tuple[Status, str, str]  # status, reason, fix


@runtime_checkable
class NeuronAdapter(Protocol):
    """How one family of neuron classes runs under SAF (one object per family, shared by every
    class registered with it; ``registry.NeuronFunctions`` implements it from callables).

    Required (never None):

    - ``saf_class(cls) -> type``: the SAF subclass of neuron class ``cls`` that ``set_saf``
      swaps in (made once per class through :func:`saf_plugin._classes.make`, so that a
      converted model pickles). Its forward runs SAF's closed form
      (:func:`saf_plugin.neuron_step.forward`) or the per-step route
      (:func:`saf_plugin.neuron_step.per_step`).
    - ``attach(m)`` / ``detach(m)``: add the SAF state to neuron ``m`` after its class is
      swapped, and remove it before the class is swapped back (``detach`` leaves the state the
      plain neuron continues from, e.g. its true membrane).
    - ``decay(m)``: λ of ``m``, a float or a tensor with grad (a learnable decay): the decay
      of the trace the weights feeding the neuron see (OTTT's rule), and of its closed form.
    - ``is_fresh(m) -> bool``: whether ``m`` is in its reset state (no step ran since its
      library's reset): the engine starts a new sequence when every neuron is fresh.

    Optional (None, or the default, where the family has nothing to say):

    - ``closed_form(m) -> bool``: whether ``m`` runs SAF's closed form; None: always.
    - ``params(m) -> NeuronParams``: a closed-form neuron's parameters
      (:class:`saf_plugin.neuron_step.NeuronParams`); needed where ``closed_form`` can be true.
    - ``decay_value(m) -> float``: λ as a Python float, cached where reading it costs a
      device synchronisation; None: ``float(decay(m))``.
    - ``fix(m) -> str``: switch ``m`` in place to the closed form where it can (a hard reset
      to a soft one), returning a note ("" if nothing changed); used by ``saf_plugin.fix``.
    - ``plain_state(m) -> bool``: whether ``m`` holds a state from a run before ``set_saf``
      (the closed form cannot continue it: the engine refuses until a reset).
    - ``reset_on_shape_change``: the library starts a new sequence when the input's shape
      changes (snnTorch re-initialises its state for a new batch size); default False.
    - ``state``: the attribute names that hold a plain module's state (``register_neuron``);
      default ().

    Provided: ``lam(m)`` (λ as a float) and ``route(m)`` ("closed form" or "per step").
    """

    saf_class: Callable[[type], type]
    attach: Callable[[nn.Module], None]
    detach: Callable[[nn.Module], None]
    decay: Callable[[nn.Module], object]
    is_fresh: Callable[[nn.Module], bool]
    fix: Optional[Callable[[nn.Module], str]]
    reset_on_shape_change: bool
    plain_state: Optional[Callable[[nn.Module], bool]]
    closed_form: Optional[Callable[[nn.Module], bool]]
    params: Optional[Callable[[nn.Module], object]]
    state: tuple[str, ...]
    decay_value: Optional[Callable[[nn.Module], float]]

    def lam(self, m: nn.Module) -> float:
        """λ of ``m`` as a Python float."""

    def route(self, m: nn.Module) -> str:
        """"closed form" or "per step"."""


@runtime_checkable
class LibraryAdapter(Protocol):
    """What is particular to one library (SpikingJelly, snnTorch): how to tell its modules
    apart, a model's step mode, resetting a model, what to tell a user to reset it, where its
    modules keep their state. One instance per library, registered with
    :func:`saf_plugin.registry.register_library` when its adapter module is imported (which
    happens once the user has imported the library: :func:`saf_plugin.registry.load_adapters`).
    """

    name: str
    """The library's import name ("spikingjelly", "snntorch")."""

    reset_advice: str
    """How a user resets a model of this library between sequences, as code
    ("functional.reset_net(net)"); the engine's errors quote it."""

    def owns(self, module: nn.Module) -> bool:
        """Whether ``module`` is one of the library's stateful modules (its neurons and
        memory modules, or a module with the library's state interface)."""

    def step_mode(self, module: nn.Module) -> Optional[str]:
        """``module``'s step mode, "s" (one step per call, [B, ...]) or "m" (a sequence per
        call, [T, B, ...]), where the library gives it one (its layers too); else None (one
        step per call). A model's step mode is its first stateful module's."""

    def step_mode_advice(self, mode: str) -> Optional[str]:
        """Code that switches a model to step mode ``mode`` (e.g. "'s'"), or None where the
        library has no step modes."""

    def reset(self, net: nn.Module) -> None:
        """Reset the state of the library's modules in ``net`` with the library's own
        mechanism (this starts a new sequence under SAF too)."""

    def detach_state(self, module: nn.Module) -> None:
        """Detach the state tensors ``module`` holds (OTTT's rule: the state's history is a
        constant), in place."""

    def state_stores(self, module: nn.Module) -> Sequence[dict]:
        """The dictionaries, besides ``module.__dict__`` and its buffers, in which ``module``
        keeps state tensors (SpikingJelly's memories), for copies of a model after a forward."""

    def keeps_state_in_buffers(self, module: nn.Module) -> bool:
        """Whether ``module`` keeps its neuron state in buffers (which
        ``DistributedDataParallel(broadcast_buffers=True)`` would overwrite)."""

    def classes_changed(self, net: nn.Module) -> None:
        """Called after ``set_saf`` or ``fix`` changed module classes or modules in ``net``
        (a library that caches per-class facts drops them)."""

    def neuron_adapter(self, cls: type, decay: Callable[[nn.Module], float],
                       lif: Optional[Callable[[nn.Module], dict]]
                       ) -> Optional[tuple[NeuronAdapter, Callable[[nn.Module], Judgement]]]:
        """For ``register_neuron(cls, ...)``: the adapter and judge of a user's neuron class
        derived from this library's neuron base, or None if ``cls`` is not the library's (or
        the library cannot take ``lif``, the neuron's LIF parameters)."""
