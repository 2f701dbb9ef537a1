"""A converted model in the hands of PyTorch: pickling, torch.save, deep copies, misuse."""

import copy
import subprocess
import sys

import pytest
import snntorch as snn
import torch
from snntorch import utils
from spikingjelly.activation_based import functional
from torch import nn

import saf_plugin
import sj_models as M


def test_torch_save_of_a_converted_model_loads_back_converted(float64, tmp_path):
    net = M.strengthen(M.conv(), gain=2.0, bias=0.5)
    x = torch.rand(4, 2, 2, 8, 8)
    saf_plugin.set_saf(net, "E")
    ref = M.run(net, x, "s")
    path = tmp_path / "net.pt"
    torch.save(net, path)
    back = torch.load(path, weights_only=False)
    assert saf_plugin.saf_mode(back) == "E"
    torch.testing.assert_close(M.run(back, x, "s"), ref, rtol=0, atol=0)
    saf_plugin.set_saf(back, None)
    assert not any("SAF" in type(m).__name__ for m in back.modules())
    # in a fresh interpreter too (the SAF classes are rebuilt from their names)
    code = ("import sys, torch, spikingjelly.activation_based; import saf_plugin; "
            "n = torch.load(sys.argv[1], weights_only=False); print(saf_plugin.saf_mode(n))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "E"


def test_snntorch_model_deep_copies_after_a_training_step():
    """(snnTorch's surrogates are local closures, so its models do not pickle, SAF or not.)"""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), snn.Leaky(0.8, init_hidden=True),
                        nn.Linear(16, 4), snn.Leaky(0.8, init_hidden=True, output=True))
    saf_plugin.set_saf(net, "E")
    utils.reset(net)
    spk, mem = net(torch.rand(3, 8) * 2)
    (spk.sum() + mem.sum()).backward()
    twin = copy.deepcopy(net)  # after a training step, without a reset
    xs = torch.rand(5, 3, 8) * 2
    outs = []
    for model in (net, twin):
        for m in model.modules():  # utils.reset misses deep copies (snnTorch's global list)
            if isinstance(m, snn.Leaky):
                m.reset_mem()
        outs.append(torch.stack([model(x)[0] for x in xs]))
    assert torch.equal(outs[0], outs[1])


def test_fix_on_a_submodule_of_a_converted_model_is_refused(float64):
    net = M.mlp()
    saf_plugin.set_saf(net, "E")
    with pytest.raises(saf_plugin.SAFStateError, match="switched to SAF"):
        saf_plugin.fix(net[1])


def test_a_bare_neuron_is_refused_with_a_message_about_wrapping_it(float64):
    with pytest.raises(saf_plugin.SAFIncompatibleError, match="wrap it"):
        saf_plugin.set_saf(M.lif(), "E")


def test_zero_time_steps_are_a_clear_error(float64):
    net = M.mlp()
    functional.set_step_mode(net, "m")
    saf_plugin.set_saf(net, "E")
    functional.reset_net(net)
    with pytest.raises(ValueError, match="T = 0"):
        net(torch.rand(0, 4, 12))


def test_reset_net_after_an_interrupted_step_recovers(float64):
    net = M.mlp()
    saf_plugin.set_saf(net, "E")
    functional.reset_net(net)
    net(torch.rand(2, 12))
    handle = net[3].register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        net(torch.rand(2, 12))
    handle.remove()
    with pytest.raises(saf_plugin.SAFStateError, match="interrupted"):
        net(torch.rand(2, 12))
    functional.reset_net(net)  # the flag does not survive a reset
    net(torch.rand(2, 12))


def test_switching_to_saf_in_the_middle_of_a_sequence_is_refused(float64):
    net = M.mlp()
    functional.reset_net(net)
    for x in torch.rand(2, 2, 12):
        net(x)  # the plain model is in the middle of a sequence
    saf_plugin.set_saf(net, "E")
    with pytest.raises(saf_plugin.SAFStateError, match="reset the model first"):
        net(torch.rand(2, 12))
    functional.reset_net(net)
    net(torch.rand(2, 12))


def test_torch_compile_runs_a_converted_model_eagerly_without_recompiling(float64):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()  # (dynamo's counters are global: other tests compile too)
    net = M.strengthen(M.mlp(), gain=2.0, bias=0.5)
    x = torch.rand(12, 3, 12)
    saf_plugin.set_saf(net, "E")
    ref = M.run(net, x, "s")
    compiled = torch.compile(net)
    functional.reset_net(net)
    out = torch.stack([compiled(xt) for xt in x])
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert counters["stats"]["unique_graphs"] <= 1, dict(counters["stats"])


@pytest.mark.parametrize("mode", ["E", "F"])
def test_inductor_runs_step_mode_m_exactly_with_the_engine_eager(float64, mode):
    """The documented limit (docs/faq.md, "torch.compile?"): Inductor compiles what surrounds
    the model, the SAF engine runs eagerly inside; outputs and gradients are the eager ones."""
    torch._dynamo.reset()
    net = M.strengthen(M.conv(), gain=2.0, bias=0.8)
    functional.set_step_mode(net, "m")
    saf_plugin.set_saf(net, mode)
    x = torch.rand(5, 3, 2, 8, 8)
    runs = []
    for fn in (net, torch.compile(lambda v: net(v) * 1.0, backend="inductor")):
        net.zero_grad()
        functional.reset_net(net)
        out = fn(x)
        (out[-1] if mode == "F" else out).sum().backward()
        runs.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=0, atol=0)
    for g_compiled, g_eager in zip(runs[1][1], runs[0][1]):
        torch.testing.assert_close(g_compiled, g_eager, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["E", "F"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_is_a_clear_error(float64, mode, bad):
    net = M.mlp()
    saf_plugin.set_saf(net, mode)
    functional.reset_net(net)
    x = torch.rand(2, 12)
    x[1, 3] = bad
    with pytest.raises(ValueError, match="nan or ±inf"):
        net(x)


def test_a_refusal_in_the_first_call_leaves_the_model_as_it_was(float64):
    """One neuron object used for two layers, after a BatchNorm in training mode: refused at its
    second call, after the BatchNorm ran; its statistics are as before the call."""
    from spikingjelly.activation_based import layer

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.bn = layer.Linear(12, 16), layer.BatchNorm1d(16)
            self.fc2, self.sn = layer.Linear(16, 16), M.lif()

        def forward(self, x):
            return self.sn(self.fc2(self.sn(self.bn(self.fc1(x)))))

    net = Shared().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    saf_plugin.set_saf(net, "E")
    functional.reset_net(net)
    with pytest.raises(saf_plugin.SAFIncompatibleError, match="ran twice in one time step"):
        net(torch.rand(4, 12))
    assert saf_plugin.saf_mode(net) is None
    after = net.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_host_float_reads_a_tensor_once_per_change():
    reads = []

    def read(t):
        reads.append(1)
        return t * 2

    p = nn.Parameter(torch.tensor(0.25))
    assert [saf_plugin.core.host_float(p, read) for _ in range(3)] == [0.5] * 3
    assert len(reads) == 1
    with torch.no_grad():
        p.add_(0.25)  # what an optimizer step does
    assert saf_plugin.core.host_float(p, read) == 1.0 and len(reads) == 2
    p.data = torch.tensor(1.0)  # a new storage: seen, although the version stays
    assert saf_plugin.core.host_float(p, read) == 2.0 and len(reads) == 3
    assert saf_plugin.core.host_float(torch.tensor(3.0)) == 3.0
    with torch.inference_mode():
        assert saf_plugin.core.host_float(torch.tensor(2.0), read) == 4.0


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts tensor -> Python number conversions (a device synchronisation on CUDA)."""
    READS = {torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.item}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += func in self.READS
        return func(*args, **(kwargs or {}))


def _learnable_models():
    from spikingjelly.activation_based import layer, neuron
    sj = nn.Sequential(layer.Linear(6, 8), neuron.ParametricLIFNode(v_reset=None),
                       layer.Linear(8, 8), neuron.ParametricLIFNode(decay_input=True, v_reset=None),
                       layer.Linear(8, 3))
    st = nn.Sequential(nn.Linear(6, 8), snn.Leaky(beta=0.8, learn_beta=True, init_hidden=True),
                       nn.Linear(8, 8), snn.Leaky(beta=0.7, learn_beta=True, learn_threshold=True,
                                                  init_hidden=True), nn.Linear(8, 3))
    return {"spikingjelly": (sj, functional.reset_net), "snntorch": (st, utils.reset)}


@pytest.mark.parametrize("lib", ["spikingjelly", "snntorch"])
def test_a_learnable_decay_is_read_to_the_host_once_per_update_not_per_step(lib):
    """On CUDA every read is a synchronisation: their number must not grow with T."""
    net, reset = _learnable_models()[lib]
    saf_plugin.set_saf(net, "E")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    counts = []
    for T in (2, 4, 16):  # the first iteration also reads the constants once
        reset(net)
        with _HostReads() as reads:
            for _ in range(T):
                opt.zero_grad()
                net(torch.rand(2, 6) * 3).sum().backward()
            opt.step()
        counts.append(reads.count)
    assert counts[1] == counts[2] <= counts[0], counts


@pytest.mark.parametrize("mode", ["E", "F"])
def test_the_bias_series_is_not_rebuilt_every_step(float64, monkeypatch, mode):
    """c[t] reaches the device once per doubling of the sequence, not once per step (on CUDA
    every host-to-device copy synchronises)."""
    calls = []
    build = saf_plugin.core.bias_series
    monkeypatch.setattr(saf_plugin.core, "bias_series", lambda *a, **k: calls.append(1) or build(*a, **k))
    net = saf_plugin.set_saf(M.strengthen(M.mlp(), gain=2.0, bias=0.8), mode)
    for T in (8, 300):
        calls.clear()
        M.run(net, torch.rand(T, 3, 12), "s")
        assert len(calls) <= 4, (T, len(calls))
