"""The benchmark networks: OTTT's CIFAR VGG and an MLP (SpikingJelly), snnTorch tutorial 6's
CSNN; and which library a model uses, hence which methods can run on it."""

from __future__ import annotations

from torch import nn

from .methods import METHODS, ON_REQUEST, SNNTORCH_METHODS

VGG_CFG = [64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512]  # ottt_spiking_vggws ("S")


def lif():
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.LIFNode(tau=2.0, decay_input=False, v_reset=None, detach_reset=True,
                          surrogate_function=surrogate.Sigmoid(alpha=4.0))


class VGG(nn.Module):
    """``ottt_spiking_vggws``'s network (cfg S: WSConv2d, LIF, Scale(2.74), AvgPool; global
    average pooling; Linear readout) with every width divided by ``width_div``; ``features``
    and ``classifier`` are plain ``nn.Sequential`` so each method can rebuild them."""

    def __init__(self, width_div: int = 1, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        from spikingjelly.activation_based import layer
        from spikingjelly.activation_based.model.spiking_vggws_ottt import Scale

        mods: list[nn.Module] = []
        c = in_channels
        for v in VGG_CFG:
            if v == "A":
                mods.append(layer.AvgPool2d(2, 2))
            else:
                w = max(1, v // width_div)
                mods += [layer.WSConv2d(c, w, kernel_size=3, padding=1), lif(), Scale(2.74)]
                c = w
        self.features = nn.Sequential(*mods)
        self.classifier = nn.Sequential(layer.AdaptiveAvgPool2d((1, 1)), layer.Flatten(1),
                                        layer.Linear(c, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def mlp(in_features: int = 784, hidden: int = 512, num_classes: int = 10) -> nn.Module:
    from spikingjelly.activation_based import layer

    return nn.Sequential(layer.Flatten(1), layer.Linear(in_features, hidden), lif(),
                         layer.Linear(hidden, hidden), lif(), layer.Linear(hidden, num_classes))


def snntorch_csnn(beta: float = 0.5) -> nn.Module:
    """snnTorch tutorial 6's CSNN for 1x28x28 input (Conv 5x5 12, pool, Leaky, Conv 5x5 64,
    pool, Leaky, Linear 1024-10, Leaky) with average pooling instead of max pooling, which SAF
    reproduces exactly; ``fast_sigmoid(slope=25)``, ``init_hidden=True``."""
    import snntorch as snn
    from snntorch import surrogate

    sg = surrogate.fast_sigmoid(slope=25)
    return nn.Sequential(
        nn.Conv2d(1, 12, 5), nn.AvgPool2d(2), snn.Leaky(beta=beta, spike_grad=sg, init_hidden=True),
        nn.Conv2d(12, 64, 5), nn.AvgPool2d(2), snn.Leaky(beta=beta, spike_grad=sg, init_hidden=True),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 10),
        snn.Leaky(beta=beta, spike_grad=sg, init_hidden=True, output=True))


def library(net: nn.Module) -> str:
    """The name of the library whose adapter owns the model's neurons ("snntorch",
    "spikingjelly"); "spikingjelly" when none does (the benchmark's own models)."""
    from ..registry import model_library

    owner = model_library(net)
    return "spikingjelly" if owner is None else owner.name


def methods_for(net: nn.Module) -> tuple[str, ...]:
    """The methods run by default on ``net``'s library (the floors of the host-bound regime,
    ``ON_REQUEST``, run when named)."""
    every = SNNTORCH_METHODS if library(net) == "snntorch" else METHODS
    return tuple(m for m in every if m not in ON_REQUEST)
