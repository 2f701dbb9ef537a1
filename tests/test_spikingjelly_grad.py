"""SAF gradients against code we did not write: SpikingJelly's OTTT (SAF-E, Theorem 1), an
independent Spike Representation (SAF-F, Theorem 2), SpikingJelly's ParametricLIF (τ)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import saf_plugin
import sj_models as M

LAM = 0.5  # tau = 2


def ottt_mlp():
    return layer.OTTTSequential(
        layer.Linear(12, 32), neuron.OTTTLIFNode(tau=2.0), layer.Linear(32, 24),
        neuron.OTTTLIFNode(tau=2.0), layer.Linear(24, 5))


def ottt_conv():
    return layer.OTTTSequential(
        layer.Conv2d(2, 8, 3, padding=1), neuron.OTTTLIFNode(tau=2.0), layer.AvgPool2d(2),
        layer.Conv2d(8, 8, 3, padding=1), neuron.OTTTLIFNode(tau=2.0), layer.Flatten(),
        layer.Linear(8 * 4 * 4, 5))


def loss_fn(out, target):
    return 0.95 * F.cross_entropy(out, target) + 0.05 * F.mse_loss(out, F.one_hot(target, out.shape[-1]).to(out))


def grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def ottt_per_step(net, x_seq, target):
    """SpikingJelly's OTTT, its first layer fed [x[t], trace_x[t]] (SAF feeds â_x)."""
    functional.reset_net(net)
    trace, out_grads = None, []
    for x in x_seq:
        trace = x if trace is None else LAM * trace + x
        net.zero_grad()
        out = net([x, trace])
        loss_fn(out, target).backward()
        functional.detach_net(net)
        out_grads.append((out.detach(), grads(net)))
    return out_grads


def saf_per_step(net, x_seq, target):
    functional.reset_net(net)
    out_grads = []
    for x in x_seq:
        net.zero_grad()
        out = net(x)
        loss_fn(out, target).backward()  # no detach_net: SAF detaches its own history
        out_grads.append((out.detach(), grads(net)))
    return out_grads


def assert_grads_close(a, b, rtol=1e-10, atol=1e-12):
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("build,shape", [(ottt_mlp, (6, 12)), (ottt_conv, (6, 2, 8, 8)),
                                         (lambda: M.vgg(width=4), (4, 3, 16, 16))])
@pytest.mark.parametrize("T", [1, 5])
def test_saf_e_gradients_equal_ottt(float64, build, shape, T):
    torch.manual_seed(T)
    ottt = M.strengthen(build(), gain=2.0, bias=0.5).train()
    saf = saf_plugin.set_saf(copy.deepcopy(ottt), "E")
    x_seq = torch.rand(T, *shape)
    target = torch.randint(0, 5, (shape[0],))
    ref, got = ottt_per_step(ottt, x_seq, target), saf_per_step(saf, x_seq, target)
    fired = M.spike_counts(ottt, lambda: ottt_per_step(ottt, x_seq, target))
    assert all(r > 0 for r in fired.values()), fired
    total_ref, total_got = {}, {}
    for (o_ref, g_ref), (o_got, g_got) in zip(ref, got):
        torch.testing.assert_close(o_got, o_ref, rtol=0, atol=1e-12)
        assert_grads_close(g_got, g_ref)  # per step: OTTT_O
        for k in g_ref:
            total_ref[k] = total_ref.get(k, 0) + g_ref[k]
            total_got[k] = total_got.get(k, 0) + g_got[k]
    assert_grads_close(total_got, total_ref)  # accumulated: OTTT_A


def test_saf_e_multistep_gradient_equals_accumulated_ottt(float64):
    """Step mode 'm': one backward of the summed per-step losses == OTTT_A."""
    torch.manual_seed(7)
    ottt = M.strengthen(ottt_mlp(), gain=2.0, bias=0.5).train()
    lif = nn.Sequential(layer.Linear(12, 32), M.lif(2.0), layer.Linear(32, 24), M.lif(2.0),
                        layer.Linear(24, 5))
    lif.load_state_dict(ottt.state_dict())
    functional.set_step_mode(lif, "m")
    saf_plugin.set_saf(lif, "E")
    x_seq, target = torch.rand(6, 6, 12), torch.randint(0, 5, (6,))
    total = {}
    for _, g in ottt_per_step(ottt, x_seq, target):
        for k in g:
            total[k] = total.get(k, 0) + g[k]
    functional.reset_net(lif)
    out = lif(x_seq)
    sum(loss_fn(o, target) for o in out).backward()
    assert_grads_close(grads(lif), total)


# ----------------------------------------------------------------------------- SAF-F


def spike_representation_grads(net, x_seq, target, theta):
    """Independent Spike Representation gradient (Meng et al. 2022, unit spikes):
    run SpikingJelly's own LIF net, take weighted firing rates a = Σ λ^(T-1-t) s[t] / c[T-1],
    then differentiate the SR map a_l = clamp(ȳ_l / θ, 0, 1), ȳ_l = W_l a_{l-1} + b_l."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    neurons = [m for m in net if isinstance(m, neuron.BaseNode)]
    spikes = {id(n): [] for n in neurons}
    hooks = [n.register_forward_hook(lambda m, i, o: spikes[id(m)].append(o.detach()))
             for n in neurons]
    functional.reset_net(net)
    with torch.no_grad():
        for x in x_seq:
            net(x)
    for h in hooks:
        h.remove()
    T = x_seq.shape[0]
    w = torch.tensor([LAM ** (T - 1 - t) for t in range(T)])
    c = w.sum()

    def rate(seq):
        return (w.view(-1, *[1] * (seq.dim() - 1)) * seq).sum(0) / c

    a = rate(x_seq)
    for lin, n in zip(linears, neurons):
        y_bar = lin(a)
        rep = torch.clamp(y_bar / theta, 0.0, 1.0)
        a = rate(torch.stack(spikes[id(n)])) + (rep - rep.detach())
    out = linears[-1](a)
    net.zero_grad()
    loss_fn(out, target).backward()
    return out.detach(), grads(net)


@pytest.mark.parametrize("theta", [1.0, 0.7])
@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_saf_f_gradient_equals_spike_representation(float64, theta, step_mode):
    torch.manual_seed(11)
    net = nn.Sequential(layer.Linear(12, 32), M.lif(2.0, v_threshold=theta), layer.Linear(32, 24),
                        M.lif(2.0, v_threshold=theta), layer.Linear(24, 5))
    M.strengthen(net, gain=2.0, bias=0.5)
    x_seq, target = torch.rand(6, 6, 12), torch.randint(0, 5, (6,))
    ref_out, ref = spike_representation_grads(net, x_seq, target, theta)
    functional.set_step_mode(net, step_mode)
    saf_plugin.set_saf(net, "F")
    functional.reset_net(net)
    if step_mode == "m":
        out = net(x_seq)[-1]
    else:
        with torch.no_grad():
            for x in x_seq[:-1]:
                net(x)
        out = net(x_seq[-1])
    torch.testing.assert_close(out.detach(), ref_out, rtol=0, atol=1e-12)
    net.zero_grad()
    loss_fn(out, target).backward()
    assert_grads_close(grads(net), ref)


def test_saf_f_multistep_builds_no_graph_before_the_last_step(float64):
    """'m' mode SAF-F: the storages autograd keeps alive do not grow with T (counted once per
    storage, so a saved view of a whole [T, ...] tensor would show)."""
    from saf_plugin.training import SavedTensorMeter

    net = M.strengthen(M.conv(), gain=2.0, bias=0.5)
    functional.set_step_mode(net, "m")
    saf_plugin.set_saf(net, "F")
    peaks = []
    for T in (4, 32):
        x = torch.rand(T, 6, 2, 8, 8)
        functional.reset_net(net)
        with SavedTensorMeter(exclude=[x]) as meter:
            net(x)[-1].sum().backward()
        peaks.append(meter.peak)
    # only the [T] bias-series vectors grow (8 bytes per step for each of a few layers);
    # one step of activations here is ~100 kB
    assert peaks[1] - peaks[0] <= 8 * 8 * (32 - 4), peaks


# ----------------------------------------------------------------------------- PLIF


@pytest.mark.parametrize("decay_input", [False, True])
def test_parametric_lif_tau_gradient_is_the_online_lif_gradient(float64, decay_input):
    """Under SAF-E, dL/dw of ParametricLIF at step t is the gradient of SpikingJelly's own
    ParametricLIF with the membrane detached between steps (OTTT-style online gradient)."""
    torch.manual_seed(13)
    net = nn.Sequential(layer.Linear(12, 32), neuron.ParametricLIFNode(init_tau=2.0, decay_input=decay_input, v_reset=None, detach_reset=True),
                        layer.Linear(32, 5), neuron.ParametricLIFNode(init_tau=3.0, decay_input=decay_input, v_reset=None, detach_reset=True))
    M.strengthen(net, gain=3.0 if decay_input else 1.5, bias=0.8)
    saf = saf_plugin.set_saf(copy.deepcopy(net), "E")
    x_seq = torch.rand(6, 6, 12) * 2
    target = torch.rand(6, 5)
    functional.reset_net(net)
    functional.reset_net(saf)
    for x in x_seq:
        net.zero_grad()
        saf.zero_grad()
        F.mse_loss(net(x), target).backward()
        F.mse_loss(saf(x), target).backward()
        functional.detach_net(net)
        for i in (1, 3):
            torch.testing.assert_close(saf[i].w.grad, net[i].w.grad, rtol=1e-9, atol=1e-12)
    assert net[1].w.grad.abs() > 0 and net[3].w.grad.abs() > 0


# ----------------------------------------------------------------------------- memory


class saved_bytes:
    """Count the bytes autograd saves for backward (torch.autograd.graph.saved_tensors_hooks)."""

    def __enter__(self):
        self.count = [0]

        def pack(t):
            self.count[0] += t.numel() * t.element_size()
            return t

        self.ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self.ctx.__enter__()
        return self.count

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)


def test_saf_e_single_step_memory_is_flat_in_T(float64):
    net = M.strengthen(M.conv(), gain=2.0, bias=0.5)
    saf_plugin.set_saf(net, "E")
    per_step = {}
    for T in (4, 32):
        functional.reset_net(net)
        counts = []
        for x in torch.rand(T, 6, 2, 8, 8):
            with saved_bytes() as counter:
                out = net(x)
            out.sum().backward()
            counts.append(counter[0])
        per_step[T] = counts
    assert max(per_step[32]) == max(per_step[4]) and per_step[32][-1] == per_step[4][-1]
    assert len(set(per_step[32][1:])) == 1, "every step after the first saves the same bytes"


def test_saf_f_multistep_with_a_container_as_entry(float64):
    """The whole model inside one nn.Sequential (SpikingJelly's CSNN style): only leaves split
    their steps 0..T-2 off the graph, so the bias series still sees T steps."""
    torch.manual_seed(17)
    inner = M.strengthen(M.conv(), gain=2.0, bias=0.5)
    net = nn.Sequential(inner)
    x = torch.rand(5, 4, 2, 8, 8)
    saf_plugin.set_saf(net, "F")
    single = M.run(net, x, "s")
    functional.set_step_mode(net, "m")
    multi = M.run(net, x, "m")
    torch.testing.assert_close(multi, single, rtol=0, atol=1e-12)
    multi[-1].sum().backward()
    assert inner[0].weight.grad.abs().sum() > 0


def test_weight_standardisation_is_cached_only_while_the_weights_do_not_change(float64, monkeypatch):
    from spikingjelly.activation_based import layer as sj_layer

    calls = []
    original = sj_layer.WSConv2d.get_weight
    monkeypatch.setattr(sj_layer.WSConv2d, "get_weight",
                        lambda self: calls.append(self) or original(self))
    net = M.strengthen(M.vgg(width=4), gain=2.0, bias=0.3)
    x = torch.rand(5, 2, 3, 16, 16)
    saf_plugin.set_saf(net, "F")
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    with torch.no_grad():
        M.run(net, x, "s")  # (SAF-F's first call also runs a copy of the model once)
    own = [m for m in net.modules() if isinstance(m, sj_layer.WSConv2d)]
    assert len([c for c in calls if any(c is m for m in own)]) == len(own), "steps 0..T-1 without autograd standardise each weight once"
    net(x[-1]).sum().backward()  # with autograd: recomputed (the graph needs it)
    opt.step()  # in-place update: the cache must not serve the old weights
    with torch.no_grad():
        after = M.run(net, x, "s")
    fresh = saf_plugin.set_saf(copy.deepcopy(saf_plugin.set_saf(net, None)), "F")
    with torch.no_grad():
        torch.testing.assert_close(after, M.run(fresh, x, "s"), rtol=0, atol=0)


def test_saf_e_gradients_equal_ottt_when_the_model_ends_with_a_neuron(float64):
    """The exit is a neuron: SAF returns its spikes s[t] = â[t] − λ â[t−1]."""
    torch.manual_seed(19)
    ottt = layer.OTTTSequential(layer.Linear(12, 32), neuron.OTTTLIFNode(tau=2.0),
                                layer.Linear(32, 5), neuron.OTTTLIFNode(tau=2.0))
    M.strengthen(ottt, gain=2.0, bias=0.5).train()
    saf = saf_plugin.set_saf(copy.deepcopy(ottt), "E")
    x_seq, target = torch.rand(6, 6, 12), torch.rand(6, 5)
    functional.reset_net(ottt)
    functional.reset_net(saf)
    trace, fired = None, 0.0
    for x in x_seq:
        trace = x if trace is None else LAM * trace + x
        ottt.zero_grad()
        saf.zero_grad()
        spike, _ = ottt([x, trace])  # OTTTLIFNode returns [spike, trace] in training
        F.mse_loss(spike, target).backward()
        functional.detach_net(ottt)
        out = saf(x)
        F.mse_loss(out, target).backward()
        assert torch.equal(out, spike)
        fired += float(spike.detach().mean())
        assert_grads_close(grads(saf), grads(ottt))
    assert fired > 0
