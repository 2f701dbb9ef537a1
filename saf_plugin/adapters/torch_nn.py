"""torch.nn modules: which maps are linear or affine (exact under SAF) and which are not."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..registry import Spec, register, register_linear


def bias_shift(module: nn.Module, out: Tensor, sample_ndim: int) -> Optional[Tensor]:
    """The bias of a Linear/ConvNd, shaped to broadcast against one sample [C, *spatial]."""
    bias = getattr(module, "bias", None)
    if bias is None:
        return None
    return bias.view(bias.shape[0], *([1] * (sample_ndim - 1))) if sample_ndim > 1 else bias


def batchnorm_shift(module: nn.Module, out: Tensor, sample_ndim: int) -> Optional[Tensor]:
    """Eval-mode BatchNorm is y = γ (x − μ)/σ + β: its constant is β − γ μ / σ."""
    if module.running_mean is None:
        return None
    inv_std = torch.rsqrt(module.running_var + module.eps)
    shift = -module.running_mean * inv_std
    if module.weight is not None:
        shift = shift * module.weight + module.bias
    return shift.view(shift.shape[0], *([1] * (sample_ndim - 1)))


def judge_batchnorm(module: nn.Module):
    if module.training and module.track_running_stats is not False:
        return (
            "approximate",
            "BatchNorm in training mode normalises with batch statistics of the growing "
            "accumulations, which is not the LIF forward",
            "use weight-standardised convolutions (layer.WSConv2d), call .eval() on the "
            "BatchNorm, or pass strict=False to accept the approximation",
        )
    if module.running_mean is None:
        return ("approximate", "BatchNorm without running statistics always uses batch statistics",
                "use track_running_stats=True or weight-standardised convolutions")
    return ("exact", "BatchNorm in eval mode is affine: its shift carries the series c[t]", "")


def judge_dropout(module: nn.Module):
    if module.training and module.p > 0:
        return (
            "approximate",
            "torch.nn.Dropout draws a new mask at every call, so the mask is not fixed over "
            "the sequence",
            "use spikingjelly.activation_based.layer.Dropout (one mask per sequence), or "
            "pass strict=False",
        )
    return ("exact", "dropout is the identity in eval mode", "")


def judge_maxpool(module: nn.Module):
    return (
        "approximate",
        "max pooling of accumulations is not the accumulation of max-pooled spikes",
        "saf_plugin.fix(net) replaces it by average pooling of the same geometry",
    )


def repair_maxpool(module: nn.Module):
    """MaxPool -> AvgPool with the same kernel, stride, padding and ceil_mode."""
    dims = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
    base = next(k for k in type(module).__mro__ if k in dims)
    if module.dilation not in (1, (1,), (1, 1), (1, 1, 1)) or module.return_indices:
        return None, "cannot repair: dilation or return_indices has no average-pooling equivalent"
    new = dims[base](module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode,
                     count_include_pad=False)
    return new, f"replaced {type(module).__name__} by {type(new).__name__} (same geometry)"


for _cls in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_linear(_cls, shift=bias_shift)
for _cls in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
             nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten, nn.Identity):
    register_linear(_cls)
register(nn.modules.batchnorm._BatchNorm, Spec("linear", shift=batchnorm_shift))
for _cls in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d):
    register(_cls, Spec("linear"))
for _cls in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d):  # exact per step; fix() offers AvgPool
    register(_cls, Spec("nonlinear", repair=repair_maxpool))
for _cls in (nn.Sequential, nn.ModuleList, nn.ModuleDict):
    register(_cls, Spec("container"))
