"""torch.utils.checkpoint inside a converted model is refused before any output.

Checkpoint recomputes its block in backward, outside the SAF engine (whose mode is active only
during the forward): a neuron in the block then refuses to run (an error in backward, after the
step's output), and a block of per-step operations (max pooling) runs on accumulations instead of
per-step values, which gives silently wrong gradients (the last test shows both, with the guard
switched off). So SAF refuses the model at its first call, naming checkpoint and the fix."""

import copy

import pytest
import torch
import torch.utils.checkpoint as cp
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import saf_plugin
import saf_plugin.runtime as runtime

VARIANTS = [False, True]  # use_reentrant


def lif():
    return neuron.LIFNode(tau=2.0, v_reset=None)


class Net(nn.Module):
    """conv → LIF → [block] → linear, the block optionally under checkpoint: conv + MaxPool2d +
    LIF ("conv-pool-lif"), conv + MaxPool2d with the LIF after the block ("conv-pool"), or a LIF
    alone ("lif")."""

    def __init__(self, kind="conv-pool-lif", reentrant=None):
        super().__init__()
        self.reentrant = reentrant
        self.c1, self.n1 = layer.Conv2d(1, 4, 3, padding=1), lif()
        mods = {"conv-pool-lif": [layer.Conv2d(4, 6, 3, padding=1), layer.MaxPool2d(2), lif()],
                "conv-pool": [layer.Conv2d(4, 6, 3, padding=1), layer.MaxPool2d(2)],
                "lif": [lif()]}[kind]
        self.block = nn.Sequential(*mods)
        self.n2 = lif() if kind == "conv-pool" else nn.Identity()
        self.fc = layer.Linear(4 * 8 * 8 if kind == "lif" else 6 * 4 * 4, 5)

    def forward(self, x):
        x = self.n1(self.c1(x))
        if self.reentrant is None:
            x = self.block(x)
        else:
            x = cp.checkpoint(self.block, x, use_reentrant=self.reentrant)
        return self.fc(self.n2(x).flatten(1))


def model(kind):
    torch.manual_seed(0)
    net = Net(kind)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)  # enough spikes that max pooling of accumulations ≠ of spikes
    return net


def inputs(steps=4):
    g = torch.Generator().manual_seed(1)
    return [2 * torch.rand(2, 1, 8, 8, generator=g) for _ in range(steps)]


def grads(net, xs):
    """Step mode 's', a backward at every step (SAF-E's use); gradients summed over the steps."""
    functional.reset_net(net)
    net.zero_grad(set_to_none=True)
    outs = []
    for x in xs:
        out = net(x)
        out.square().sum().backward()
        outs.append(out.detach())
    return outs, {k: p.grad.clone() for k, p in net.named_parameters()}


def bptt(net, xs):
    """The plain model: one backward of the loss summed over the steps."""
    functional.reset_net(net)
    net.zero_grad(set_to_none=True)
    outs = [net(x) for x in xs]
    sum(o.square().sum() for o in outs).backward()
    return [o.detach() for o in outs], {k: p.grad.clone() for k, p in net.named_parameters()}


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")  # SAF-F's probe
@pytest.mark.parametrize("kind", ["conv-pool-lif", "conv-pool", "lif"])
@pytest.mark.parametrize("reentrant", VARIANTS, ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("mode", ["E", "F"])
def test_checkpoint_in_a_converted_model_is_refused_at_the_first_call(float64, reentrant, kind,
                                                                      mode):
    net = model(kind)
    net.reentrant = reentrant
    before = copy.deepcopy(net.state_dict())
    saf_plugin.set_saf(net, mode)
    functional.reset_net(net)
    with pytest.raises(saf_plugin.SAFIncompatibleError) as err:
        net(inputs(1)[0])  # no output: refused inside the first forward
    msg = str(err.value)
    assert f"torch.utils.checkpoint (use_reentrant={reentrant})" in msg
    assert "test_checkpoint.py" in msg  # where the user's forward calls it
    assert "remove torch.utils.checkpoint under SAF; SAF-E's memory is already flat in T" in msg
    assert saf_plugin.saf_mode(net) is None  # switched back, nothing changed
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("reentrant", VARIANTS, ids=["non-reentrant", "reentrant"])
def test_after_the_refusal_the_plain_model_checkpoints_as_usual(float64, reentrant):
    """The refused model is the plain model again: checkpoint of the stateless block gives BPTT's
    gradients of the model without checkpoint. (A block with a neuron is not checkpointable even
    in the plain model: the recomputation steps the neuron again, from its later state.)"""
    xs = inputs()
    ref, ref_g = bptt(model("conv-pool"), xs)  # plain, no checkpoint
    net = model("conv-pool")
    net.reentrant = reentrant
    saf_plugin.set_saf(net, "E")
    functional.reset_net(net)
    with pytest.raises(saf_plugin.SAFIncompatibleError, match="checkpoint"):
        net(xs[0])
    out, g = bptt(net, xs)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for k in ref_g:
        torch.testing.assert_close(g[k], ref_g[k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("reentrant", VARIANTS, ids=["non-reentrant", "reentrant"])
def test_checkpoint_around_the_whole_converted_model_is_refused(float64, reentrant):
    net = model("conv-pool-lif")
    saf_plugin.set_saf(net, "E")
    functional.reset_net(net)
    with pytest.raises(saf_plugin.SAFIncompatibleError, match=r"torch\.utils\.checkpoint"):
        cp.checkpoint(net, inputs(1)[0].requires_grad_(), use_reentrant=reentrant)
    assert saf_plugin.saf_mode(net) is None


def test_check_with_an_input_lists_the_checkpoint(float64):
    net = model("conv-pool")
    net.reentrant = False
    lines = [f.line() for f in saf_plugin.check(net, inputs(1)[0])]
    assert any("torch.utils.checkpoint" in ln and "unsupported" in ln for ln in lines), lines
    assert saf_plugin.saf_mode(net) is None


@pytest.mark.parametrize("reentrant", VARIANTS, ids=["non-reentrant", "reentrant"])
def test_without_the_guard_checkpoint_is_wrong_so_the_refusal_is_needed(float64, reentrant,
                                                                        monkeypatch):
    """Why SAF refuses: with the guard off, a checkpointed pool-only block gives the same outputs
    but other gradients than the SAF-E model without checkpoint (max pooling recomputed on
    accumulations), and a checkpointed block with a neuron fails in backward. If this test starts
    failing, the engine may have learnt to recompute checkpointed blocks exactly, and the refusal
    can be revisited."""
    monkeypatch.setattr(runtime.Runtime, "no_checkpoint", staticmethod(lambda: None))
    xs = inputs()
    ref = model("conv-pool")
    saf_plugin.set_saf(ref, "E")
    ref_out, ref_g = grads(ref, xs)

    net = model("conv-pool")
    net.reentrant = reentrant
    saf_plugin.set_saf(net, "E")
    out, g = grads(net, xs)
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the forward is right
    torch.testing.assert_close(g["fc.weight"], ref_g["fc.weight"], rtol=0, atol=1e-9)
    wrong = (g["block.0.weight"] - ref_g["block.0.weight"]).abs().max().item()
    assert wrong > 1e-3, wrong  # the checkpointed conv's gradient is not SAF-E's

    net = model("conv-pool-lif")
    net.reentrant = reentrant
    saf_plugin.set_saf(net, "E")
    functional.reset_net(net)
    out = net(xs[0])  # an output is returned ...
    with pytest.raises(saf_plugin.SAFStateError, match="called on its own"):
        out.sum().backward()  # ... and backward fails in the recomputation
