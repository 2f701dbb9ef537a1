"""SpikingJelly's layers SAF must know by class: dropout (one mask per sequence: a product with a
constant), weight-standardised layers (a weight cache valid under SAF), max pooling (``fix``
offers average pooling) and containers. Every other layer is judged by the operations its
forward runs. Imported by ``saf_plugin/adapters/spikingjelly.py``.
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import layer
from torch import nn

from ..registry import Spec, register
from . import torch_nn


def fix_maxpool(m: nn.Module):
    """layer.MaxPoolNd -> layer.AvgPoolNd with the same geometry and step mode."""
    new, note = torch_nn.fix_maxpool(m)
    if new is None:
        return new, note
    sj = getattr(layer, type(new).__name__)
    new = sj(new.kernel_size, new.stride, new.padding, ceil_mode=new.ceil_mode,
             count_include_pad=False, step_mode=m.step_mode)
    return new, f"replaced {type(m).__name__} by layer.{type(new).__name__} (same geometry)"


def cached_standardised_weight(self):
    """WSConv2d/WSLinear under SAF: without autograd (SAF-F's steps 0..T−2, inference) the
    standardised weight is computed once per weight version instead of at every step."""
    base = type(self)._saf_base
    if torch.is_grad_enabled():  # parameters only: no operation the engine must see
        with torch._C.DisableTorchFunction():
            return base.get_weight(self)
    gain = getattr(self, "gain", None)
    with torch._C.DisableTorchFunction():  # (the key's attribute reads would each be routed)
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device)
                    for p in (self.weight, gain) if p is not None)
    cached = self.__dict__.get("_saf_ws_cache")
    if cached is None or cached[0] != key:
        cached = (key, base.get_weight(self))
        self.__dict__["_saf_ws_cache"] = cached
    return cached[1]


def _layers(*names: str) -> list[type]:
    return [getattr(layer, name) for name in names if hasattr(layer, name)]


for _cls in _layers("Dropout", "Dropout2d"):  # one mask per sequence: a product with a constant
    register(_cls, Spec("linear"))
for _cls in _layers("WSConv2d", "WSLinear"):
    register(_cls, Spec("linear", methods={"get_weight": cached_standardised_weight}))
for _cls in _layers("MaxPool1d", "MaxPool2d", "MaxPool3d"):
    register(_cls, Spec("nonlinear", fix=fix_maxpool))
for _cls in _layers("SeqToANNContainer", "MultiStepContainer", "StepModeContainer",
                    "OTTTSequential"):
    register(_cls, Spec("container"))
