"""OTTT's reference VGG with its own neuron class, transcribed for the corpus.

A compact transcription -- not a copy -- of the model code of pkuxmq/OTTT-SNN (M. Xiao et al.,
"Online Training Through Time for Spiking Neural Networks", NeurIPS 2022), commit
c15d5da05eea0c48e1fa837a4f8073297006d93f, files

- ``modules/base.py``: ``MemoryModule`` (state in a ``_memories`` dict, reset values),
- ``modules/surrogate.py``: ``heaviside`` and the ``Sigmoid`` surrogate (α = 4),
- ``modules/neuron_spikingjelly.py``: ``BaseNode``, ``LIFNode`` (the repository's own copy of an
  old SpikingJelly; nothing here derives from the installed SpikingJelly),
- ``modules/neuron.py``: ``OnlineLIFNode``,
- ``models/spiking_vgg.py``: ``ScaledWSConv2d``, ``Replace``, ``WrapedSNNOp``,
  ``SequentialModule``, ``Scale``, ``OnlineSpikingVGG`` (light classifier).

The repository has no licence, so the code is rewritten, keeping its structure and its arithmetic
operation for operation: ``v = v.detach() * (1 - 1/τ) + x``; the ``init`` keyword re-initialises
the state at t = 0; the rate ``r = r·(1 − 1/τ) + s`` is tracked under ``no_grad`` and, with
``output_type='spike_rate'``, concatenated to the spikes along the batch; ``WrapedSNNOp`` runs its
op on the spike half for the value and on the rate half for the gradient (``Replace``);
``SequentialModule`` passes the keywords to neurons and wrapped ops only. Left out: the IF neuron,
neuron dropout, ``save_spike``, the CuPy kernels, the heavy classifier, BatchNorm and plain-conv
variants. One change: the light classifier's input width is ``cfg[-1]·fc_hw²`` (the original
hard-codes 512, the width of its full-size cfg), so that a tiny cfg builds.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function


# --------------------------------------------------------------------------- modules/base.py


class MemoryModule(nn.Module):
    """State variables live in ``_memories`` (reset values in ``_memories_rv``)."""

    def __init__(self):
        super().__init__()
        self._memories = {}
        self._memories_rv = {}

    def register_memory(self, name, value):
        assert not hasattr(self, name), f"{name} has been set as a member variable"
        self._memories[name] = value
        self._memories_rv[name] = copy.deepcopy(value)

    def reset(self):
        for key in self._memories:
            self._memories[key] = copy.deepcopy(self._memories_rv[key])

    def __getattr__(self, name):
        memories = self.__dict__.get("_memories")
        if memories is not None and name in memories:
            return memories[name]
        return super().__getattr__(name)

    def __setattr__(self, name, value):
        memories = self.__dict__.get("_memories")
        if memories is not None and name in memories:
            memories[name] = value
        else:
            super().__setattr__(name, value)

    def _apply(self, fn):
        for store in (self._memories, self._memories_rv):
            for key, value in store.items():
                if isinstance(value, torch.Tensor):
                    store[key] = fn(value)
        return super()._apply(fn)


# --------------------------------------------------------------------------- modules/surrogate.py


def heaviside(x):
    return (x >= 0).to(x)


class sigmoid(Function):
    @staticmethod
    def forward(ctx, x, alpha):
        if x.requires_grad:
            ctx.save_for_backward(x)
            ctx.alpha = alpha
        return heaviside(x)

    @staticmethod
    def backward(ctx, grad_output):
        grad_x = None
        if ctx.needs_input_grad[0]:
            sg = (ctx.saved_tensors[0] * ctx.alpha).sigmoid_()
            grad_x = grad_output * (1.0 - sg) * sg * ctx.alpha
        return grad_x, None


class Sigmoid(nn.Module):
    def __init__(self, alpha=4.0, spiking=True):
        super().__init__()
        self.alpha, self.spiking = alpha, spiking

    def forward(self, x):
        if self.spiking:
            return sigmoid.apply(x, self.alpha)
        return (x * self.alpha).sigmoid()


# ----------------------------------------------------------- modules/neuron_spikingjelly.py


class BaseNode(MemoryModule):
    def __init__(self, v_threshold=1.0, v_reset=0.0, surrogate_function=Sigmoid(),
                 detach_reset=False):
        assert isinstance(v_reset, float) or v_reset is None
        assert isinstance(v_threshold, float)
        super().__init__()
        self.register_memory("v", 0.0 if v_reset is None else v_reset)
        self.register_memory("v_threshold", v_threshold)
        self.register_memory("v_reset", v_reset)
        self.detach_reset = detach_reset
        self.surrogate_function = surrogate_function

    def neuronal_fire(self):
        return self.surrogate_function(self.v - self.v_threshold)

    def neuronal_reset(self, spike):
        spike_d = spike.detach() if self.detach_reset else spike
        if self.v_reset is None:
            self.v = self.v - spike_d * self.v_threshold
        else:
            self.v = (1.0 - spike_d) * self.v + spike_d * self.v_reset


class LIFNode(BaseNode):
    def __init__(self, tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0,
                 surrogate_function=Sigmoid(), detach_reset=False):
        assert isinstance(tau, float) and tau > 1.0
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset)
        self.tau = tau
        self.decay_input = decay_input


# --------------------------------------------------------------------------- modules/neuron.py


class OnlineLIFNode(LIFNode):
    """OTTT's neuron: the membrane is detached at every step (online training), the state is
    initialised by ``init=True`` at t = 0, and the presynaptic trace (``rate_tracking``) is kept."""

    def __init__(self, tau=2.0, decay_input=False, v_threshold=1.0, v_reset=None,
                 surrogate_function=Sigmoid(), detach_reset=True, track_rate=True,
                 neuron_dropout=0.0, **kwargs):
        super().__init__(tau, decay_input, v_threshold, v_reset, surrogate_function, detach_reset)
        self.track_rate = track_rate
        self.dropout = neuron_dropout
        assert neuron_dropout == 0.0, "neuron dropout is not transcribed"
        if track_rate:
            self.register_memory("rate_tracking", None)

    def neuronal_charge(self, x):
        if self.decay_input:
            x = x / self.tau
        if self.v_reset is None or self.v_reset == 0:
            self.v = self.v.detach() * (1 - 1.0 / self.tau) + x
        else:
            self.v = self.v.detach() * (1 - 1.0 / self.tau) + self.v_reset / self.tau + x

    def forward_init(self, x):
        self.v = torch.zeros_like(x)
        self.rate_tracking = None

    def forward(self, x, **kwargs):
        if kwargs.get("init", False):
            self.forward_init(x)
        output_type = kwargs.get("output_type", "spike")
        self.neuronal_charge(x)
        spike = self.neuronal_fire()
        self.neuronal_reset(spike)
        if self.track_rate:
            with torch.no_grad():
                if self.rate_tracking is None:
                    self.rate_tracking = spike.clone().detach()
                else:
                    self.rate_tracking = (self.rate_tracking * (1 - 1.0 / self.tau)
                                          + spike.clone().detach())
        if output_type == "spike_rate":
            assert self.track_rate
            return torch.cat((spike, self.rate_tracking), dim=0)
        return spike


# --------------------------------------------------------------------------- models/spiking_vgg.py


class ScaledWSConv2d(nn.Conv2d):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, gain=True, eps=1e-4):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias)
        self.gain = nn.Parameter(torch.ones(out_channels, 1, 1, 1)) if gain else None
        self.eps = eps

    def get_weight(self):
        fan_in = np.prod(self.weight.shape[1:])
        mean = torch.mean(self.weight, axis=[1, 2, 3], keepdims=True)
        var = torch.var(self.weight, axis=[1, 2, 3], keepdims=True)
        weight = (self.weight - mean) / ((var * fan_in + self.eps) ** 0.5)
        if self.gain is not None:
            weight = weight * self.gain
        return weight

    def forward(self, x):
        return F.conv2d(x, self.get_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class Replace(Function):
    """The value of the second argument, the gradient to both."""

    @staticmethod
    def forward(ctx, z1, z1_r):
        return z1_r

    @staticmethod
    def backward(ctx, grad):
        return grad, grad


class WrapedSNNOp(nn.Module):
    """With ``require_wrap``: the input is [spikes; rates] along the batch; the op's value comes
    from the spikes (no graph), its gradient from the rates."""

    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, x, **kwargs):
        if not kwargs.get("require_wrap", True):
            return self.op(x)
        half = x.shape[0] // 2
        spike, rate = x[:half], x[half:]
        with torch.no_grad():
            out = self.op(spike).detach()
        in_for_grad = Replace.apply(spike, rate)
        out_for_grad = self.op(in_for_grad)
        return Replace.apply(out_for_grad, out)


class SequentialModule(nn.Sequential):
    """A Sequential that passes the forward's keywords to neurons and wrapped ops only."""

    def __init__(self, single_step_neuron, *args):
        super().__init__(*args)
        self.single_step_neuron = single_step_neuron

    def forward(self, input, **kwargs):
        for module in self._modules.values():
            if isinstance(module, (self.single_step_neuron, WrapedSNNOp)):
                input = module(input, **kwargs)
            else:
                input = module(input)
        return input


class Scale(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x, **kwargs):
        return x * self.scale


class OnlineSpikingVGG(nn.Module):
    """cfg: channel counts and 'M' (average pooling, as in the original); weight-standardised
    convs, each followed by a neuron and ``Scale(2.74)``; the first conv is never wrapped."""

    def __init__(self, cfg, num_classes=10, single_step_neuron=OnlineLIFNode, **kwargs):
        super().__init__()
        self.single_step_neuron = single_step_neuron
        self.grad_with_rate = kwargs.get("grad_with_rate", False)
        self.fc_hw = kwargs.get("fc_hw", 3)
        self.features = self.make_layers(cfg, single_step_neuron, **kwargs)
        self.avgpool = nn.AdaptiveAvgPool2d((self.fc_hw, self.fc_hw))
        fc = nn.Linear(cfg[-1] * self.fc_hw ** 2, num_classes)  # the original: 512 * fc_hw**2
        self.classifier = SequentialModule(single_step_neuron,
                                           WrapedSNNOp(fc) if self.grad_with_rate else fc)
        self._initialize_weights()

    def forward(self, x, **kwargs):
        if self.grad_with_rate and self.training:
            x = self.features(x, output_type="spike_rate", require_wrap=True, **kwargs)
            x = torch.flatten(self.avgpool(x), 1)
            return self.classifier(x, output_type="spike_rate", require_wrap=True, **kwargs)
        x = self.features(x, require_wrap=False, **kwargs)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x, require_wrap=False, **kwargs)

    def _initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    @staticmethod
    def make_layers(cfg, neuron, **kwargs):
        grad_with_rate = kwargs.get("grad_with_rate", False)
        layers, in_channels, first = [], kwargs.get("c_in", 3), True
        for v in cfg:
            if v == "M":
                layers.append(nn.AvgPool2d(kernel_size=2, stride=2))
                continue
            conv = ScaledWSConv2d(in_channels, v, kernel_size=3, padding=1)
            if not first and grad_with_rate:
                conv = WrapedSNNOp(conv)
            first = False
            layers += [conv, neuron(**kwargs), Scale(2.74)]
            in_channels = v
        return SequentialModule(neuron, *layers)
