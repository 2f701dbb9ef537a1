"""saf-plugin: Spike Accumulation Forwarding (SAF) for SpikingJelly and snnTorch models.

    import saf_plugin
    saf_plugin.check(net, x)       # neurons and refusals; with an input, every operation's route
    saf_plugin.set_saf(net, "E")   # SAF-E in place (same modules, parameters, state_dict)
    ...train...
    saf_plugin.set_saf(net, None)  # back to the ordinary spiking model
"""

from .adapters import torch_nn as _torch_nn  # noqa: F401  (registers torch.nn's entries)
from .check import check, fix
from .converted import saf_mode
from .swap import set_saf
from .errors import Finding, SAFError, SAFIncompatibleError, SAFStateError, WeightChangeWarning
from .extend import register_linear, register_neuron, register_per_step
from .training import EpochStats, train_epoch, train_step

del _torch_nn  # (imported for its registrations only)

__all__ = [
    "set_saf",
    "saf_mode",
    "check",
    "fix",
    "Finding",
    "SAFError",
    "SAFIncompatibleError",
    "SAFStateError",
    "WeightChangeWarning",
    "register_linear",
    "register_neuron",
    "register_per_step",
    "train_step",
    "train_epoch",
    "EpochStats",
]
__version__ = "0.1.0"
