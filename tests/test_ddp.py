"""saf_plugin.training under DistributedDataParallel: two gloo processes on the CPU, each with
half of a global batch, against one process on the whole batch (float64).

SAF-E with one update per sequence keeps the same bytes for backward at T=6 and T=24 and
all-reduces every gradient bucket once per sequence (counted by a DDP communication hook);
``online=True`` all-reduces at every step; SAF-F and step mode 'm' once. Gradients and weights
equal the single-process ones. The loop of one's own in docs/faq.md is run the same way."""

from __future__ import annotations

import copy
import importlib.util
import re
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

warnings.filterwarnings("ignore", message="Triton not available")
pytest.importorskip("spikingjelly.activation_based")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import saf_plugin  # noqa: E402
from saf_plugin.training import SavedTensorMeter, train_step  # noqa: E402

FAQ = Path(__file__).resolve().parents[1] / "docs" / "faq.md"
WORLD, B, T = 2, 4, 6  # processes, batch per process, steps
SEQS = 2               # sequences per case
# (name, SAF mode, step mode, online); "faq" runs docs/faq.md's train_sequence
CASES = [("E", "E", "s", False), ("E online", "E", "s", True), ("F", "F", "s", False),
         ("E step mode m", "E", "m", False), ("F step mode m", "F", "m", False),
         ("faq", "E", "s", False)]


def mlp(dtype, step_mode="s"):
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    def lif():
        return neuron.LIFNode(tau=2.0, decay_input=False, v_reset=None, detach_reset=True,
                              surrogate_function=surrogate.Sigmoid(alpha=4.0))

    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(6, 10), lif(), layer.Linear(10, 8), lif(),
                        layer.Linear(8, 3)).to(dtype)
    with torch.no_grad():  # enough drive that every layer fires
        net[0].weight.mul_(3.0)
        net[2].weight.mul_(3.0)
    functional.set_step_mode(net, step_mode)
    return net


def snn_mlp():
    """snnTorch, learnable β: SAF reads the membrane snnTorch keeps in a buffer."""
    import snntorch as snn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), snn.Leaky(beta=0.5, learn_beta=True, init_hidden=True),
                        nn.Linear(10, 8), snn.Leaky(beta=0.5, learn_beta=True, init_hidden=True),
                        nn.Linear(8, 3))
    with torch.no_grad():
        net[0].weight.mul_(3.0)
        net[2].weight.mul_(3.0)
    saf_plugin.set_saf(net, "E")
    return net


def data(steps, batch, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(steps, batch, 6, generator=g, dtype=dtype) * 1.5,
            torch.randint(0, 3, (batch,), generator=g))


def faq_train_sequence():
    """The DDP loop docs/faq.md shows, as a function."""
    (code,) = [c for c in re.findall(r"^```python\n(.*?)^```", FAQ.read_text(), re.S | re.M)
               if "def train_sequence" in c]
    scope: dict = {}
    exec(compile(code, "docs/faq.md", "exec"), scope)
    return scope["train_sequence"]


def run_case(net, online, shard, faq=None, count=None, dtype=torch.float64):
    """SEQS sequences of SGD; returns (weights, grads of the last sequence, the all-reduces of
    each sequence: one list of bucket indices per all-reduce)."""
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    rounds = []
    for k in range(SEQS):
        x, y = data(T, WORLD * B, dtype, seed=10 + k)
        n = len(count) if count is not None else 0
        if faq is not None:
            faq(net, x[:, shard], y[shard], F.cross_entropy, opt)
        else:
            train_step(net, x[:, shard], y[shard], F.cross_entropy, opt, online=online)
        if count is not None:
            rounds.append([[]])
            for index, last in count[n:]:
                rounds[-1][-1].append(index)
                if last:
                    rounds[-1].append([])
            rounds[-1].pop()  # the empty list after the last bucket
    params = list(net.parameters())
    return [p.detach().clone() for p in params], [p.grad.clone() for p in params], rounds


def counting_hook(state: list, bucket):
    """DDP's default all-reduce (an average), counted: (bucket index, last bucket?)."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    state.append((bucket.index(), bucket.is_last()))
    return allreduce_hook(None, bucket)


def outcome(fn, *args, **kwargs):
    """``fn``'s result, or the error it raised as "ErrorType: message" (a failing case then
    fails its own test instead of the worker)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"


def static_graph(online):
    net = mlp(torch.float64)
    saf_plugin.set_saf(net, "E")
    ddp = nn.parallel.DistributedDataParallel(net, static_graph=True)
    x, y = data(T, B, torch.float64, seed=0)
    train_step(ddp, x, y, F.cross_entropy, torch.optim.SGD(ddp.parameters(), 0.1), online=online)


def saved_peaks(rank):
    """SAF-E, one update per sequence: (saf_mode(ddp), {T: peak bytes saved for backward})."""
    peaks = {}
    for steps in (6, 24):
        net = mlp(torch.float32)
        saf_plugin.set_saf(net, "E")
        ddp = nn.parallel.DistributedDataParallel(net)
        x, y = data(steps, B, torch.float32, seed=rank)
        with SavedTensorMeter(exclude=[x]) as meter:
            train_step(ddp, x, y, F.cross_entropy, torch.optim.SGD(ddp.parameters(), lr=0.1))
        peaks[steps] = meter.peak
    return saf_plugin.saf_mode(ddp), peaks


def worker(rank: int, init: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Triton not available")
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=WORLD)
    DDP = nn.parallel.DistributedDataParallel
    res: dict = {"cases": {}}
    res["peaks"] = outcome(saved_peaks, rank)
    shard = slice(rank * B, (rank + 1) * B)
    faq = outcome(faq_train_sequence)
    for name, mode, step_mode, online in CASES:
        net = mlp(torch.float64, step_mode)
        saf_plugin.set_saf(net, mode)
        ddp = DDP(net, bucket_cap_mb=1e-4)  # several buckets (after DDP rebuilds them)
        count: list = []
        ddp.register_comm_hook(count, counting_hook)
        res["cases"][name] = outcome(run_case, ddp, online, shard,
                                     faq if name == "faq" else None, count)
    res["static_graph"] = outcome(static_graph, False)
    res["static_graph online"] = outcome(static_graph, True)
    if importlib.util.find_spec("snntorch") is not None:
        # broadcast_buffers=True: process 0's membranes reach the others at step 0 only
        res["snntorch"] = outcome(run_case, DDP(snn_mlp()), False, shard, dtype=torch.float32)
        # (SAF's learnable β has no gradient at step 0: find_unused_parameters with online)
        res["snntorch online"] = outcome(run_case, DDP(snn_mlp(), find_unused_parameters=True),
                                         True, shard, dtype=torch.float32)
    torch.save(res, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks():
    mp = pytest.importorskip("torch.multiprocessing")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(str(Path(tmp) / "init"), tmp), nprocs=WORLD, join=True)
        yield [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def single_process(mode, step_mode, online):
    net = mlp(torch.float64, step_mode)
    saf_plugin.set_saf(net, mode)
    return run_case(net, online, slice(None))


@pytest.mark.slow
def test_saf_e_memory_flat_in_T_under_ddp(ranks):
    for r in ranks:
        assert not isinstance(r["peaks"], str), r["peaks"]
        mode, peak = r["peaks"]
        assert mode == "E"
        assert peak[6] == peak[24] > 0, peak


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_all_reduces_and_gradients_equal_one_process(ranks, case):
    name, mode, step_mode, online = case
    w_ref, g_ref, _ = single_process(mode, step_mode, online)
    assert all(g.abs().sum() > 0 for g in g_ref)
    per_sequence = T if online else 1
    for r in ranks:
        assert not isinstance(r["cases"][name], str), r["cases"][name]
        w, g, rounds = r["cases"][name]
        assert [len(seq) for seq in rounds] == [per_sequence] * SEQS, rounds
        for seq in rounds:
            for buckets in seq:  # one all-reduce: every bucket once
                assert sorted(buckets) == list(range(len(buckets))), rounds
        assert len(rounds[-1][-1]) > 1, rounds  # the parameters are in several buckets
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        for a, b in zip(w, w_ref):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for a, b in zip(ranks[0]["cases"][name][0], ranks[1]["cases"][name][0]):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_refuses_static_graph_with_no_sync(ranks):
    for r in ranks:
        assert r["static_graph"].startswith("SAFStateError: DistributedDataParallel(static_graph")
        assert r["static_graph online"] is None  # every step synchronises: it runs


def test_saf_mode_sees_through_ddp():
    """A one-process group: saf_mode and train_step read the wrapped model."""
    mlp_net = mlp(torch.float64)
    saf_plugin.set_saf(mlp_net, "F")
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=0, world_size=1)
        try:
            ddp = nn.parallel.DistributedDataParallel(mlp_net)
            assert saf_plugin.saf_mode(ddp) == "F"
            x, y = data(T, B, torch.float64, seed=0)
            ref = copy.deepcopy(mlp_net)
            loss, out = train_step(ddp, x, y, F.cross_entropy)
            loss_ref, out_ref = train_step(ref, x, y, F.cross_entropy)
            assert torch.equal(out, out_ref) and torch.equal(loss, loss_ref)
            for p, q in zip(mlp_net.parameters(), ref.parameters()):
                assert torch.equal(p.grad, q.grad)
        finally:
            dist.destroy_process_group()


@pytest.mark.slow
def test_snntorch_membranes_in_buffers(ranks):
    """DDP broadcasts process 0's buffers, snnTorch's membranes among them, before a forward
    that follows a synchronising one: with one update per sequence that is step 0 only (the
    result equals one process); with online=True it would be every step, which is refused."""
    pytest.importorskip("snntorch")
    w_ref, g_ref, _ = run_case(snn_mlp(), False, slice(None), dtype=torch.float32)
    for r in ranks:
        assert not isinstance(r["snntorch"], str), r["snntorch"]
        w, g, _ = r["snntorch"]
        for a, b in zip(w, w_ref):  # float32 (snnTorch's spikes): rounding only
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        assert r["snntorch online"].startswith("SAFStateError: "), r["snntorch online"]
        assert "broadcast_buffers=False" in r["snntorch online"]
