"""torch.nn modules SAF must know by class: max pooling (``fix`` offers average pooling, which
runs on accumulations instead of per step) and containers (only their children count).

Every other module is judged by the operations its forward runs (:mod:`saf_plugin.runtime`).
"""

from __future__ import annotations

from torch import nn

from ..registry import Spec, register


def fix_maxpool(module: nn.Module):
    """MaxPool -> AvgPool with the same kernel, stride, padding and ceil_mode."""
    dims = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
    base = next(k for k in type(module).__mro__ if k in dims)
    if module.dilation not in (1, (1,), (1, 1), (1, 1, 1)) or module.return_indices:
        return None, "cannot replace: dilation or return_indices has no average-pooling equivalent"
    new = dims[base](module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode,
                     count_include_pad=False)
    return new, f"replaced {type(module).__name__} by {type(new).__name__} (same geometry)"


for _cls in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d):
    register(_cls, Spec("nonlinear", fix=fix_maxpool))
for _cls in (nn.Sequential, nn.ModuleList, nn.ModuleDict):
    register(_cls, Spec("container"))
