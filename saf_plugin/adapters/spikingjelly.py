"""SpikingJelly 2.0 (``spikingjelly.activation_based``): neurons and layers under SAF.

A converted neuron keeps its object, parameters and ``v`` memory; SAF adds three memories
(``saf_acc`` = â[t−1], ``saf_z_prev``, ``saf_y_prev``), so ``functional.reset_net`` and
``functional.detach_net`` reset and detach them like any other state. The membrane ``v`` is
not updated under SAF (SAF never needs it).
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import base, layer, neuron
from torch import nn

from .. import neuron_step
from ..neuron_step import NeuronParams, NeuronState
from ..registry import NeuronAdapter, Spec, register, register_linear
from . import torch_nn

_MEMORIES = ("saf_acc", "saf_z_prev", "saf_y_prev")
_SAF_CLASSES: dict[type, type] = {}


def decay(m: nn.Module):
    """λ of a SpikingJelly neuron: 1 − 1/τ (LIF), 1 (IF), 1 − sigmoid(w) (ParametricLIF)."""
    if isinstance(m, neuron.ParametricLIFNode):
        return 1.0 - m.w.sigmoid()
    if isinstance(m, neuron.IFNode):
        return 1.0
    return 1.0 - 1.0 / m.tau


def params(m: nn.Module) -> NeuronParams:
    lam = decay(m)
    learnable = torch.is_tensor(lam)
    lam_f = float(lam.detach()) if learnable else float(lam)
    scale = None
    if getattr(m, "decay_input", False):
        scale = float(m.w.detach().sigmoid()) if learnable else 1.0 / m.tau
    return NeuronParams(lam_f, lam if learnable else None, float(m.v_threshold), scale,
                        m.surrogate_function)


def _forward(self, x, *args, **kwargs):
    mem = self._memories
    st = NeuronState(*(mem[k] if torch.is_tensor(mem[k]) else None for k in _MEMORIES))
    out = neuron_step.forward(self, self._saf_ctx, x, st, params(self))
    mem["saf_acc"], mem["saf_z_prev"], mem["saf_y_prev"] = st.acc, st.z_prev, st.y_prev
    return out


def saf_class(cls: type) -> type:
    if cls not in _SAF_CLASSES:
        _SAF_CLASSES[cls] = type(f"SAF{cls.__name__}", (cls,), {
            "forward": _forward, "single_step_forward": _forward, "multi_step_forward": _forward,
            "_saf_base": cls, "__module__": cls.__module__,
            "__doc__": f"{cls.__name__} under SAF (class swapped in place by saf_plugin.set_saf)."})
    return _SAF_CLASSES[cls]


def attach(m: nn.Module) -> None:
    for name in _MEMORIES:
        m.register_memory(name, 0.0 if name == "saf_acc" else None)


def detach(m: nn.Module) -> None:
    for name in _MEMORIES:
        m._memories.pop(name, None)
        m._memories_rv.pop(name, None)


def is_fresh(m: nn.Module) -> bool:
    return not torch.is_tensor(m._memories.get("saf_acc"))


def judge_neuron(m: nn.Module):
    if m.v_reset is not None:
        return ("unsupported",
                f"hard reset (v_reset={m.v_reset}) has no closed form in accumulations",
                "saf_plugin.fix(net) switches it to soft reset (v_reset=None); this changes "
                "the model, so retrain or fine-tune")
    return ("exact", "soft-reset neuron: SAF forward equals its spikes", "")


def fix_neuron(m: nn.Module) -> str:
    old = m.v_reset
    m.v_reset = None
    return f"hard reset (v_reset={old}) -> soft reset (v_reset=None)"


ADAPTER = NeuronAdapter(saf_class=saf_class, attach=attach, detach=detach, decay=decay,
                        is_fresh=is_fresh, fix=fix_neuron)
_DYNAMICS = ("single_step_functional_forward", "multi_step_functional_forward",
             "single_step_forward", "multi_step_forward", "forward", "neuronal_charge")

for _cls in (neuron.LIFNode, neuron.IFNode, neuron.ParametricLIFNode, neuron.OTTTLIFNode,
             neuron.SLTTLIFNode):
    register(_cls, Spec("neuron", judge=judge_neuron, neuron=ADAPTER, dynamics=_DYNAMICS))


def judge_unknown_state(m: nn.Module):
    name = type(m).__name__
    return ("unsupported",
            f"{name} is a stateful SpikingJelly module (neuron or memory) whose dynamics SAF "
            "does not know; SAF is exact only for soft-reset LIF/IF/ParametricLIF neurons "
            "(including OTTT/SLTT) and a subclass that overrides their dynamics is not covered",
            "use neuron.LIFNode / IFNode / ParametricLIFNode with v_reset=None")


register(base.MemoryModule, Spec("stateful", judge=judge_unknown_state, dynamics=()))


def repair_maxpool(m: nn.Module):
    """layer.MaxPoolNd -> layer.AvgPoolNd with the same geometry and step mode."""
    new, note = torch_nn.repair_maxpool(m)
    if new is None:
        return new, note
    sj = getattr(layer, type(new).__name__)
    new = sj(new.kernel_size, new.stride, new.padding, ceil_mode=new.ceil_mode,
             count_include_pad=False, step_mode=m.step_mode)
    return new, f"replaced {type(m).__name__} by layer.{type(new).__name__} (same geometry)"


for _name in ("Linear", "Conv1d", "Conv2d", "Conv3d", "WSConv2d", "WSLinear"):
    register_linear(getattr(layer, _name), shift=torch_nn.bias_shift)
for _name in ("AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d",
              "AdaptiveAvgPool3d", "Flatten", "Dropout", "Dropout2d"):
    register_linear(getattr(layer, _name))
for _name in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"):
    register(getattr(layer, _name), Spec("linear", judge=torch_nn.judge_batchnorm,
                                         shift=torch_nn.batchnorm_shift, runtime=True))
for _name in ("MaxPool1d", "MaxPool2d", "MaxPool3d"):
    register(getattr(layer, _name), Spec("nonlinear", judge=torch_nn.judge_maxpool,
                                         repair=repair_maxpool))
for _name in ("SeqToANNContainer", "MultiStepContainer", "StepModeContainer", "OTTTSequential"):
    register(getattr(layer, _name), Spec("container"))

try:  # OTTT's VGG multiplies by a constant after each neuron: linear
    from spikingjelly.activation_based.model.spiking_vggws_ottt import Scale

    register_linear(Scale)
except ImportError:  # pragma: no cover - older layouts
    pass
