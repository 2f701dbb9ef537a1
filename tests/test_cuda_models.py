"""Whole SAF models on CUDA (marked ``gpu``; scripts/gpu_check.sh runs them on a GPU machine).

- float64: SAF-E's output equals SpikingJelly's own neurons on the same GPU, every layer firing,
  and its gradients equal SpikingJelly's OTTT (the CPU proofs, repeated on CUDA).
- float32, step mode 'm': the model with the fused Triton scan (what ``"auto"`` picks on CUDA)
  equals the same model with the PyTorch scan bit for bit in output, and in gradient to float
  rounding: every other operation is the same CUDA call in both runs.
"""

import copy

import pytest
import torch
from spikingjelly.activation_based import functional

import saf_plugin
import sj_models as M
from saf_plugin import kernels
from test_spikingjelly_forward import assert_all_fire
from test_spikingjelly_grad import assert_grads_close, ottt_conv, ottt_per_step, saf_per_step

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SHAPES = {"mlp": (6, 12), "conv": (6, 2, 8, 8), "folded": (6, 2, 8, 8), "residual": (6, 2, 8, 8)}
BUILD = {"mlp": M.mlp, "conv": M.conv, "folded": M.folded, "residual": M.residual}


@pytest.mark.parametrize("arch", list(BUILD))
@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_saf_e_equals_spikingjelly_on_cuda(float64, arch, step_mode):
    if arch == "folded" and step_mode == "s":
        pytest.skip("SeqToANNContainer is multi-step only")
    torch.manual_seed(3)
    net = M.strengthen(BUILD[arch](), gain=2.0, bias=0.8).cuda()
    functional.set_step_mode(net, step_mode)
    x = torch.rand(8, *SHAPES[arch], device="cuda")
    ref = M.run(net, x, step_mode)
    assert_all_fire(net, lambda: M.run(net, x, step_mode))
    saf_plugin.set_saf(net, "E")
    out = M.run(net, x, step_mode)
    assert out.is_cuda
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_saf_e_gradients_equal_ottt_on_cuda(float64):
    torch.manual_seed(5)
    ottt = M.strengthen(ottt_conv(), gain=2.0, bias=0.5).train().cuda()
    saf = saf_plugin.set_saf(copy.deepcopy(ottt), "E")
    x_seq = torch.rand(5, 6, 2, 8, 8, device="cuda")
    target = torch.randint(0, 5, (6,), device="cuda")
    ref, got = ottt_per_step(ottt, x_seq, target), saf_per_step(saf, x_seq, target)
    for (o_ref, g_ref), (o_got, g_got) in zip(ref, got):
        torch.testing.assert_close(o_got, o_ref, rtol=0, atol=1e-12)
        assert_grads_close(g_got, g_ref)


@pytest.mark.parametrize("mode", ["E", "F"])
@pytest.mark.parametrize("arch", ["conv", "folded", "residual"])
def test_triton_scan_in_a_model_equals_torch_scan(monkeypatch, arch, mode):
    torch.manual_seed(7)
    net = M.strengthen(BUILD[arch](), gain=2.0, bias=0.8).cuda()
    functional.set_step_mode(net, "m")
    x = torch.rand(6, *SHAPES[arch], device="cuda")
    assert_all_fire(net, lambda: M.run(net, x, "m"))
    saf_plugin.set_saf(net, mode)
    choose, chosen = kernels._choose, []

    def spy(backend, y, surrogate, m):
        chosen.append(choose(backend, y, surrogate, m))
        return chosen[-1]

    runs = {}
    for forced in (None, "torch"):
        monkeypatch.setattr(kernels, "_choose", spy if forced is None else lambda *a: forced)
        net.zero_grad()
        out = M.run(net, x, "m")
        (out[-1] if mode == "F" else out).sum().backward()
        runs[forced] = (out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()})
    assert chosen and set(chosen) == {"triton"}, chosen
    assert torch.equal(runs[None][0], runs["torch"][0])
    assert_grads_close(runs[None][1], runs["torch"][1], rtol=1e-4, atol=1e-6)


def test_snntorch_leaky_on_cuda_equals_snntorch():
    """snnTorch runs float32: dyadic weights and spike inputs keep every sum exact."""
    pytest.importorskip("snntorch")
    from test_snntorch import hidden_rates, run_seq, seq_net, spikes

    torch.manual_seed(2)
    net = seq_net(learn=True, graded=1.5).cuda()
    x = spikes(8, 6, 20).cuda()
    ref = run_seq(net, x)
    rates = hidden_rates(net, run_seq, x)
    assert len(rates) == 3 and all(0 < r < 1 for r in rates.values()), rates
    saf_plugin.set_saf(net, "E")
    got = run_seq(net, x)
    assert got[0].is_cuda
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
