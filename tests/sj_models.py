"""Small SpikingJelly 2.0 models for the tests, built from SpikingJelly's own modules."""

from __future__ import annotations

import copy

import torch
from spikingjelly.activation_based import functional, layer, neuron
from spikingjelly.activation_based.model import spiking_vggws_ottt
from torch import nn


def lif(tau=2.0, decay_input=False, **kw):
    return neuron.LIFNode(tau=tau, decay_input=decay_input, v_reset=None, **kw)


def mlp(decay_input=False, taus=(2.0, 2.0), n_in=12):
    return nn.Sequential(
        layer.Flatten(), layer.Linear(n_in, 32), lif(taus[0], decay_input),
        layer.Linear(32, 24), lif(taus[1], decay_input), layer.Linear(24, 5))


def conv(decay_input=False):
    """Conv + eval BatchNorm + average pooling, biases everywhere."""
    net = nn.Sequential(
        layer.Conv2d(2, 8, 3, padding=1), layer.BatchNorm2d(8), lif(2.0, decay_input),
        layer.AvgPool2d(2), layer.Conv2d(8, 8, 3, padding=1), lif(2.0, decay_input),
        layer.AdaptiveAvgPool2d(2), layer.Flatten(), layer.Linear(32, 5))
    bn = net[1]
    bn.running_mean.normal_(0, 0.2)
    bn.running_var.uniform_(0.5, 1.5)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_(0, 0.2)
    bn.eval()
    return net


def folded(decay_input=False):
    """Plain torch.nn layers inside SeqToANNContainer (time folded into the batch)."""
    return nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(2, 8, 3, padding=1), nn.AvgPool2d(2)),
        lif(2.0, decay_input, step_mode="m"),
        layer.SeqToANNContainer(nn.Flatten(), nn.Linear(8 * 4 * 4, 16)),
        lif(2.0, decay_input, step_mode="m"),
        layer.SeqToANNContainer(nn.Linear(16, 5)))


class ResidualBlock(nn.Module):
    def __init__(self, c, decay_input=False):
        super().__init__()
        self.conv1 = layer.Conv2d(c, c, 3, padding=1)
        self.sn1 = lif(2.0, decay_input)
        self.conv2 = layer.Conv2d(c, c, 3, padding=1)
        self.sn2 = lif(2.0, decay_input)

    def forward(self, x):
        return self.sn2(self.conv2(self.sn1(self.conv1(x))) + x)


def residual(decay_input=False):
    return nn.Sequential(
        layer.Conv2d(2, 8, 3, padding=1), lif(2.0, decay_input), ResidualBlock(8, decay_input),
        layer.AvgPool2d(2), layer.Flatten(), layer.Linear(8 * 4 * 4, 5))


def vgg(width=8):
    """OTTT's CIFAR VGG (ottt_spiking_vggws: WSConv2d, Scale(2.74), AvgPool) at reduced width."""
    cfg = [width, 2 * width, "A", 4 * width, 4 * width, "A", 8 * width, 8 * width, "A",
           8 * width, 8 * width]
    net = spiking_vggws_ottt.OTTTSpikingVGG(cfg, weight_standardization=True, num_classes=10,
                                            spiking_neuron=neuron.OTTTLIFNode, tau=2.0)
    net.classifier[2] = layer.Linear(8 * width, 10)
    return net


def strengthen(net: nn.Module, gain: float = 1.5, bias: float = 0.3, seed: int = 0) -> nn.Module:
    """Scale weights and draw biases so that every layer fires (else tests are vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                if isinstance(getattr(m, "gain", None), torch.Tensor):
                    m.gain.mul_(gain)  # weight-standardised: scaling the weight does nothing
                else:
                    m.weight.mul_(gain)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * bias)
    return net


def run(net: nn.Module, x_seq: torch.Tensor, step_mode: str) -> torch.Tensor:
    """Reset, then run a [T, B, ...] sequence; returns [T, B, ...]."""
    functional.reset_net(net)
    if step_mode == "m":
        return net(x_seq)
    return torch.stack([net(x) for x in x_seq])


def spike_counts(net: nn.Module, fn) -> dict[str, float]:
    """Firing rate of every neuron layer while ``fn()`` runs."""
    rates: dict[str, list] = {}
    hooks = []
    for name, m in net.named_modules():
        if isinstance(m, neuron.BaseNode):
            def hook(mod, inp, out, name=name):
                out = out[0] if isinstance(out, (list, tuple)) else out
                rates.setdefault(name, []).append(out.detach().float().mean().item())
            hooks.append(m.register_forward_hook(hook))
    try:
        fn()
    finally:
        for h in hooks:
            h.remove()
    return {k: sum(v) / len(v) for k, v in rates.items()}


def copy_model(net):
    return copy.deepcopy(net)


# --------------------------------------------------------------------------- helpers


def fingerprint(net):
    """Everything set_saf might disturb: classes, attribute names, state, parameter objects."""
    return (
        [(n, type(m)) for n, m in net.named_modules()],
        [(n, sorted(m.__dict__)) for n, m in net.named_modules()],
        [(n, sorted(getattr(m, "_memories", {}))) for n, m in net.named_modules()],
        {k: v.clone() for k, v in net.state_dict().items()},
        [id(p) for p in net.parameters()],
    )


def assert_same(a, b):
    assert a[0] == b[0] and a[1] == b[1] and a[2] == b[2] and a[4] == b[4]
    assert a[3].keys() == b[3].keys()
    for k in a[3]:
        assert torch.equal(a[3][k], b[3][k]), k
