"""The snnTorch modules SAF refuses by class: sequence-level neurons, ``Alpha``, ``DeltaLeaky``,
the spiking LSTMs, a neuron it does not know (``SpikingNeuron`` subclasses that override a known
neuron's dynamics), and ``BatchNormTT`` (a list of one BatchNorm per time step). Imported by
``saf_plugin/adapters/snntorch.py``.
"""

from __future__ import annotations

import snntorch as snn
from torch import nn

from ..registry import Spec, register


def _refuse(reason: str, fix_hint: str):
    return lambda m: ("unsupported", reason, fix_hint)


_SEQUENCE = "a sequence-level neuron (it processes all time steps in one call)"
_REFUSED = {
    "StateLeaky": (_SEQUENCE, "use snn.Leaky driven step by step"),
    "LinearLeaky": (_SEQUENCE, "use nn.Linear followed by snn.Leaky"),
    "LeakyParallel": (_SEQUENCE, "use snn.Leaky driven step by step"),
    "AssociativeLeaky": (_SEQUENCE + " with associative state", "use snn.Leaky"),
    "Alpha": ("an alpha neuron: its input reaches the membrane through two currents that cancel "
              "within a step (α- and β-current: +I and −I), so OTTT's instantaneous gradient, "
              "which SAF-E trains with, is zero: nothing would learn",
              "use snn.Synaptic (or snn.Leaky)"),
    "DeltaLeaky": ("a Leaky that transmits membrane deltas, not spikes", "use snn.Leaky"),
    "SLSTM": ("a spiking LSTM: its gates are nonlinear in the input", "use snn.Leaky"),
    "SConv2dLSTM": ("a spiking conv-LSTM: its gates are nonlinear in the input",
                    "use nn.Conv2d followed by snn.Leaky"),
}
for _name, (_reason, _fix) in _REFUSED.items():
    _cls = getattr(snn, _name, None)
    if _cls is not None:
        register(_cls, Spec("neuron", judge=_refuse(f"snntorch.{_name} is {_reason}", _fix)))
register(snn.SpikingNeuron, Spec("neuron", judge=_refuse(
    "saf-plugin does not know this snnTorch neuron (a subclass that overrides a known neuron's "
    "dynamics, or a neuron it does not list)",
    "saf_plugin.register_neuron(cls, decay=...) runs it per step (docs/extending.md)")))

def _is_bntt(kids) -> bool:
    """snntorch.BatchNormTT1d/2d: a ModuleList of one plain BatchNorm1d/2d per time step, all of
    one width, affine, with the bias removed (``bn.bias = None``). An ordinary list of
    BatchNorms keeps its bias and is not BNTT. (BNTT built with ``affine=False`` looks like any
    list of non-affine BatchNorms and is not recognised by class; the engine then refuses it at
    run time, as a linear map that changes from step to step.)"""
    if len(kids) < 2 or type(kids[0]) not in (nn.BatchNorm1d, nn.BatchNorm2d):
        return False
    first = kids[0]
    return all(type(k) is type(first) and k.num_features == first.num_features and k.affine
               and k.weight is not None and k.bias is None for k in kids)


def judge_modulelist(m: nn.Module):
    """snntorch.BatchNormTT1d/2d return a ModuleList of one BatchNorm per time step."""
    kids = list(m.children())
    if _is_bntt(kids):
        return ("unsupported",
                f"a ModuleList of {len(kids)} {type(kids[0]).__name__} (snntorch.BatchNormTT: "
                "one BatchNorm per time step) is a time-varying affine map, which SAF's "
                "accumulations cannot carry",
                "use one BatchNorm (in eval mode) or weight-standardised layers")
    return ("exact", "container", "")


register(nn.ModuleList, Spec("container", judge=judge_modulelist))
