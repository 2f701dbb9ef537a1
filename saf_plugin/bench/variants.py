"""Each method's copy of a model, and one training iteration of it."""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .methods import METHODS, SNNTORCH_METHODS
from .models import library


def _neurons(net: nn.Module):
    from spikingjelly.activation_based import neuron

    return [(n, m) for n, m in net.named_modules() if isinstance(m, neuron.BaseNode)]


def _replace(net: nn.Module, path: str, new: nn.Module) -> nn.Module:
    if not path:
        return new
    parent, _, child = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, new)
    return net


def _neuron_kwargs(method: str, path: str, m) -> dict:
    """The arguments of the OTTT/SLTT neuron that replaces the LIF neuron ``m`` at ``path``;
    a neuron those methods cannot replace exactly is refused with the reason."""
    from spikingjelly.activation_based import neuron

    cell = "OTTTLIFNode" if method == "ottt" else "SLTTLIFNode"
    if not isinstance(m, neuron.LIFNode):
        raise ValueError(f"SpikingJelly's {cell} replaces LIF neurons only "
                         f"({path or '<root>'}: {type(m).__name__})")
    if m.v_reset is not None:
        raise ValueError(f"SpikingJelly's {cell} resets by subtraction ({path or '<root>'}: "
                         "LIFNode with a hard reset, v_reset=0.0); --fix switches every "
                         "method's model to soft reset")
    return dict(tau=float(m.tau), decay_input=m.decay_input, v_threshold=float(m.v_threshold),
                v_reset=None, surrogate_function=m.surrogate_function,
                detach_reset=m.detach_reset)


def variant(base: nn.Module, method: str) -> nn.Module:
    """A deep copy of the SpikingJelly model ``base`` (LIF neurons, soft reset) set up for
    ``method``. OTTT swaps neurons to OTTTLIFNode and every innermost ``nn.Sequential`` to
    ``OTTTSequential`` (a plain tensor then passes the first module, as in SpikingJelly)."""
    import saf_plugin

    net = copy.deepcopy(base)
    if library(base) == "snntorch":
        if method not in SNNTORCH_METHODS:
            raise ValueError(f"{method} is not available for snnTorch models (snnTorch has no "
                             f"OTTT, SLTT or multi-step mode); use {', '.join(SNNTORCH_METHODS)}")
        if method in ("saf_e_online", "saf_f"):
            saf_plugin.set_saf(net, "E" if method == "saf_e_online" else "F")
        return net
    from spikingjelly.activation_based import functional, layer, neuron

    if method in ("bptt", "saf_e_multi"):
        functional.set_step_mode(net, "m")
    else:
        functional.set_step_mode(net, "s")
    if method == "saf_e_multi" or method == "saf_e_online":
        saf_plugin.set_saf(net, "E")
    elif method == "saf_f":
        saf_plugin.set_saf(net, "F")
    elif method in ("relu", "relu_online"):
        for path, _ in _neurons(net):
            net = _replace(net, path, nn.ReLU())
    elif method == "sltt":
        for path, m in _neurons(net):
            net = _replace(net, path, neuron.SLTTLIFNode(**_neuron_kwargs(method, path, m)))
    elif method == "ottt":
        for path, m in _neurons(net):
            kw = _neuron_kwargs(method, path, m)
            kw.pop("detach_reset")
            net = _replace(net, path, neuron.OTTTLIFNode(**kw))
        seqs = [(p, s) for p, s in net.named_modules() if type(s) is nn.Sequential
                and not any(isinstance(c, nn.Sequential) for c in s.children())]
        for path, s in seqs:
            net = _replace(net, path, layer.OTTTSequential(*s.children()))
    elif method not in ("bptt", "plain_step"):
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if hasattr(functional, "invalidate_reset_cache"):
        functional.invalidate_reset_cache(net)
    return net


def make_runner(method: str, net: nn.Module, lr: float = 0.01) -> Callable:
    """``run(x_seq [T, B, ...], y [B])``: one training iteration of ``method`` on ``net``."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.learning import online_learning

    from ..training import train_step

    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)

    def loss_t(T):
        return lambda o, y: F.cross_entropy(o, y) / T

    if method in ("ottt", "sltt"):
        def run(x_seq, y):
            T = x_seq.shape[0]
            tgt = y.unsqueeze(1).expand(-1, T)
            online_learning.ottt_online_training(net, opt, x_seq.transpose(0, 1), tgt, loss_t(T),
                                                 online=(method == "ottt"))
            functional.reset_net(net)
    elif method == "relu":
        def run(x_seq, y):
            T = x_seq.shape[0]
            opt.zero_grad()
            for t in range(T):
                loss_t(T)(net(x_seq[t]), y).backward()
            opt.step()
    elif method in ("plain_step", "relu_online"):
        return _per_step_runner(net, opt, loss_t)
    else:
        online = method == "saf_e_online"

        def run(x_seq, y):
            train_step(net, x_seq, y, loss_t(x_seq.shape[0]), opt, online=online)
    return run


def _per_step_runner(net: nn.Module, opt, loss_t) -> Callable:
    """A backward and an update at every step, the model's state (if any) detached after
    each: the plain per-step loop (``plain_step``) and ``relu_online``."""
    if library(net) == "snntorch":
        from snntorch import utils

        neurons = [m for m in net.modules() if hasattr(m, "detach_hidden")]
        reset, first = utils.reset, lambda out: out[0]  # (spikes, membrane) of the last neuron

        def detach():
            for m in neurons:
                m.mem = m.mem.detach()
    else:
        from spikingjelly.activation_based import functional

        reset, first = functional.reset_net, lambda out: out

        def detach():
            functional.detach_net(net)

    def run(x_seq, y):
        T = x_seq.shape[0]
        reset(net)
        for t in range(T):
            opt.zero_grad()
            loss_t(T)(first(net(x_seq[t])), y).backward()
            opt.step()
            detach()
    return run
