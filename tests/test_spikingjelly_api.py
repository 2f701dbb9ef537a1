"""SpikingJelly models through the public API: training, reset_net, deepcopy, state_dict, every
refusal (with the model left untouched) and exactness across skips, decays and registration
order. The round trip, check and fix themselves: test_swap.py; subclass lookup: test_registry.py."""

import copy

import pytest
import torch
from spikingjelly.activation_based import base, functional, layer, neuron
from torch import nn

import saf_plugin
from saf_plugin import SAFIncompatibleError
import sj_models as M
from sj_models import assert_same, fingerprint


def test_training_under_saf_updates_the_users_parameters(float64):
    net = M.strengthen(M.mlp(), gain=2.0, bias=0.5)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    w0 = net[1].weight.detach().clone()
    saf_plugin.set_saf(net, "E")
    functional.reset_net(net)
    for x in torch.rand(4, 6, 12):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
    saf_plugin.set_saf(net, None)
    assert not torch.equal(net[1].weight, w0)


def test_reset_net_resets_saf_state_and_deepcopy_works(float64):
    net = M.strengthen(M.mlp(), gain=2.0, bias=0.5)
    x = torch.rand(6, 6, 12)
    ref = M.run(net, x, "s")
    saf_plugin.set_saf(net, "E")
    first = M.run(net, x, "s")
    second = M.run(net, x, "s")  # reset_net between: the same sequence gives the same output
    assert torch.equal(first, second)
    clone = copy.deepcopy(net)
    assert saf_plugin.saf_mode(clone) == "E"
    torch.testing.assert_close(M.run(clone, x, "s"), ref, rtol=0, atol=1e-12)
    saf_plugin.set_saf(clone, None)
    assert saf_plugin.saf_mode(net) == "E", "the copy has its own SAF state"
    torch.testing.assert_close(M.run(net, x, "s"), ref, rtol=0, atol=1e-12)


def test_state_dict_saved_under_saf_loads_into_the_plain_model(float64, tmp_path):
    net = M.mlp()
    saf_plugin.set_saf(net, "E")
    torch.save(net.state_dict(), tmp_path / "w.pt")
    plain = M.mlp()
    plain.load_state_dict(torch.load(tmp_path / "w.pt"))
    saf_plugin.set_saf(net, None)
    for a, b in zip(net.parameters(), plain.parameters()):
        assert torch.equal(a, b)


def test_input_shape_change_without_reset_is_an_error(float64):
    net = M.mlp()
    saf_plugin.set_saf(net, "E")
    functional.reset_net(net)
    net(torch.rand(4, 12))
    with pytest.raises(saf_plugin.SAFStateError, match="reset_net"):
        net(torch.rand(3, 12))


# ----------------------------------------------------------------------------- check / refusals


class _Memory(base.MemoryModule):
    """A stateful module that is not a neuron (no BaseNode): SAF does not know its dynamics."""

    def __init__(self):
        super().__init__()
        self.register_memory("m", 0.0)

    def forward(self, x):
        self.m = self.m + x
        return self.m


def refusal_models():
    """(model, path, hint, mode): refused at set_saf."""
    return {
        "hard_reset_saf_f": (nn.Sequential(layer.Linear(4, 4), neuron.LIFNode(),
                                           layer.Linear(4, 2)), "1", "closed form", "F"),
    }


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_a_memory_module_saf_does_not_know_runs_per_step_exactly(float64, step_mode):
    """A stateful module that is not a neuron (no BaseNode) runs its own step on its per-step
    input, its memory detached before every step; check() says so."""
    net = M.strengthen(_with(_Memory(), 3), gain=2.5, bias=0.5)
    functional.set_step_mode(net, step_mode)
    x = torch.rand(5, 2, 12)
    ref = M.run(net, x, step_mode)
    assert 0 < float((ref != 0).double().mean())
    finding = next(f for f in saf_plugin.check(net) if f.path == "3")
    assert finding.status == "exact" and "per step" in finding.reason
    saf_plugin.set_saf(net, "E")
    torch.testing.assert_close(M.run(net, x, step_mode), ref, rtol=0, atol=1e-12)


def _with(module, at=2):
    net = M.mlp()
    net.insert(at, module)
    return net


@pytest.mark.parametrize("case", list(refusal_models()))
def test_refusals_name_path_cause_and_fix_and_leave_the_model_untouched(float64, case):
    net, path, hint, mode = refusal_models()[case]
    net.train()
    finding = next(f for f in saf_plugin.check(net, mode=mode) if f.path == path)
    assert finding.status == "unsupported" and finding.reason and finding.fix
    before = fingerprint(net)
    with pytest.raises(SAFIncompatibleError) as err:
        saf_plugin.set_saf(net, mode)
    msg = str(err.value)
    assert f"\n  {path} (" in msg and hint in msg and "nothing was changed" in msg
    assert [f.path for f in err.value.findings] == [path]
    assert_same(fingerprint(net), before)


def per_step_models():
    """Non-linear maps between neurons: exact under SAF-E (they run per step), refused by
    SAF-F at the first call (its gradient is defined for linear maps only)."""
    bn_train = nn.Sequential(layer.Conv2d(2, 4, 3), layer.BatchNorm2d(4), M.lif(), layer.Flatten(),
                             layer.Linear(36, 3))
    return {
        "maxpool": (nn.Sequential(layer.Conv2d(2, 4, 3), M.lif(), layer.MaxPool2d(2),
                                  layer.Flatten(), layer.Linear(4, 3)), (2, 2, 5, 5), "max_pool2d"),
        "bn_train": (bn_train, (2, 2, 5, 5), "batch_norm"),
        "nn_dropout": (_with(nn.Dropout(0.5), 3), (2, 12), "dropout"),
        "relu": (_with(nn.ReLU(), 3), (2, 12), "relu"),
    }


@pytest.mark.parametrize("case", list(per_step_models()))
def test_non_linear_maps_run_per_step_exactly_and_saf_f_refuses_them(float64, case):
    net, shape, op = per_step_models()[case]
    net = M.strengthen(net.train(), gain=2.5, bias=0.5)
    x = torch.rand(5, *shape)
    torch.manual_seed(0)
    ref = M.run(net, x, "s")
    assert 0 < float((ref != 0).double().mean())
    saf_plugin.set_saf(net, "E")
    torch.manual_seed(0)  # nn.Dropout draws the same masks, one per step, as the plain model
    torch.testing.assert_close(M.run(net, x, "s"), ref, rtol=0, atol=1e-12)
    assert any(f.module == op and "per step" in f.reason
               for f in saf_plugin.check(_plain(net), x[0]))
    saf_plugin.set_saf(net, None)
    before = fingerprint(net)
    saf_plugin.set_saf(net, "F")
    with pytest.raises(SAFIncompatibleError, match=f"{op} at .*SAF-F") as err:
        M.run(net, x, "s")
    assert "switched back to the plain model" in str(err.value)
    assert saf_plugin.saf_mode(net) is None
    assert_same(fingerprint(net), before)


def _plain(net):
    probe = copy.deepcopy(net)
    saf_plugin.set_saf(probe, None)
    return probe


def test_model_without_neurons_is_refused():
    with pytest.raises(SAFIncompatibleError, match="no spiking neuron"):
        saf_plugin.set_saf(nn.Sequential(nn.Linear(2, 2)), "E")


def test_batchnorm_switched_to_train_after_set_saf_stays_exact(float64):
    net = M.strengthen(M.conv(), gain=2.0, bias=0.5)  # BatchNorm in eval: on accumulations
    x = torch.rand(4, 2, 2, 8, 8)
    saf_plugin.set_saf(net, "E")
    net.train()  # now batch statistics: per step
    out = M.run(net, x, "s")
    saf_plugin.set_saf(net, None)
    torch.testing.assert_close(out, M.run(net, x, "s"), rtol=0, atol=1e-12)


def test_modules_registered_out_of_order_are_exact(float64):
    class Reordered(nn.Module):
        def __init__(self):
            super().__init__()
            self.readout = layer.Linear(16, 2)  # registered first, used last
            self.fc = layer.Linear(4, 16)
            self.sn = M.lif()

        def forward(self, x):
            return self.readout(self.sn(self.fc(x)))

    net = M.strengthen(Reordered(), gain=2.5, bias=0.5)
    x = torch.rand(5, 3, 4)
    ref = M.run(net, x, "s")
    saf_plugin.set_saf(net, "E")
    torch.testing.assert_close(M.run(net, x, "s"), ref, rtol=0, atol=1e-12)


class MixedSkip(nn.Module):
    """A skip connection across neurons of different τ: not exact under SAF."""

    def __init__(self, tau2=4.0):
        super().__init__()
        self.fc1 = layer.Linear(4, 8)
        self.sn1 = M.lif(2.0)
        self.fc2 = layer.Linear(8, 8)
        self.sn2 = M.lif(tau2)
        self.fc3 = layer.Linear(8, 8)
        self.sn3 = M.lif(2.0)

    def forward(self, x):
        a = self.sn1(self.fc1(x))
        return self.sn3(self.fc3(self.sn2(self.fc2(a)) + a))


@pytest.mark.parametrize("tau2", [2.0, 4.0])
def test_skip_connection_across_different_decays_is_exact(float64, tau2):
    torch.manual_seed(3)
    net = M.strengthen(MixedSkip(tau2), gain=2.5, bias=0.8)
    x = torch.rand(8, 6, 4)
    ref = M.run(net, x, "s")
    saf_plugin.set_saf(net, "E")
    torch.testing.assert_close(M.run(net, x, "s"), ref, rtol=0, atol=1e-12)


def test_skip_connection_with_one_decay_is_exact(float64):
    torch.manual_seed(3)
    net = M.strengthen(MixedSkip(2.0), gain=2.5, bias=0.8)
    x = torch.rand(8, 6, 4)
    ref = M.run(net, x, "s")
    saf_plugin.set_saf(net, "E")
    torch.testing.assert_close(M.run(net, x, "s"), ref, rtol=0, atol=1e-12)


def test_an_interrupted_step_is_reported_and_a_reset_recovers(float64):
    net = M.mlp()
    saf_plugin.set_saf(net, "E")
    functional.reset_net(net)
    net(torch.rand(2, 12))
    def interrupt(module, args):
        raise KeyboardInterrupt

    handle = net[3].register_forward_pre_hook(interrupt)  # after the entry ran
    with pytest.raises(KeyboardInterrupt):
        net(torch.rand(2, 12))
    handle.remove()
    with pytest.raises(saf_plugin.SAFStateError, match="interrupted"):
        net(torch.rand(2, 12))
    functional.reset_net(net)
    net(torch.rand(2, 12))
