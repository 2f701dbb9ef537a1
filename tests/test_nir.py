"""NIR export of a SAF-trained snnTorch model: what works and where it stops (docs/deployment.md).

Checked with snnTorch 1.0.0, nir 1.0.4-1.0.8 and nirtorch 2.6. A faithful round trip of a
reset-by-subtraction network is impossible, for two independent reasons:

1. ``snntorch.export_to_nir`` fails nir's own type inference on a Leaky with a scalar β/θ
   (``nir.LIF`` gets 0-d parameters, so its input type is ``[]`` while the Linear before it
   outputs ``[16]``). No nir version helps: < 1.0.6 has no ``LIF.v_reset`` (the exporter passes
   it), 1.0.6-1.0.8 run the failing inference. Per-neuron β/θ vectors with the same values
   (numerically the same model) get past it.
2. NIR's ``LIF`` only has hard reset (``v = v_reset`` after a spike; the fields are
   tau, r, v_leak, v_threshold, v_reset). snnTorch's exporter ignores ``reset_mechanism`` and
   writes ``v_reset = 0``; its importer always builds ``Leaky(reset_mechanism="zero",
   reset_delay=False)``. A subtract-reset model (the only kind SAF trains) comes back as a
   zero-reset model and spikes differently, silently.

The tests pin both facts, and show that the reset is the only thing lost: a zero-reset copy of
the trained weights round-trips bit-exactly, and so does the re-imported model once its
neurons are switched back to subtract reset by hand (information the NIR file does not hold).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

snn = pytest.importorskip("snntorch")  # the [snntorch] / [dev] extra
pytest.importorskip("nir", reason="nir is not installed (pip install nir nirtorch)")
pytest.importorskip("nirtorch", reason="nirtorch is not installed (pip install nir nirtorch)")
import nir
from snntorch.export_nir import export_to_nir
from snntorch.import_nir import import_from_nir
from torch import nn

import saf_plugin
from saf_plugin.training import reset_state

pytestmark = pytest.mark.filterwarnings(
    "ignore:nirtorch.extract_nir_graph is being deprecated:DeprecationWarning")

T, B, N_IN, N_HID, N_OUT = 12, 5, 8, 16, 4


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    snn.SpikingNeuron.instances.clear()
    yield
    snn.SpikingNeuron.instances.clear()


def make_net(reset="subtract"):
    return nn.Sequential(
        nn.Linear(N_IN, N_HID), snn.Leaky(beta=0.9, init_hidden=True, reset_mechanism=reset),
        nn.Linear(N_HID, N_OUT),
        snn.Leaky(beta=0.9, init_hidden=True, output=True, reset_mechanism=reset))


def leakies(net):
    return [m for m in net.modules() if isinstance(m, snn.Leaky)]


def run(net, x):
    """Spikes of the output layer, one call per step (the imported GraphModule returns
    (spikes, state); the original's output Leaky returns (spikes, mem))."""
    reset_state(net)
    out = []
    for t in range(x.shape[0]):
        o = net(x[t])
        out.append(o[0] if isinstance(o, tuple) else o)
    return torch.stack(out)


def train_saf_e(net, steps=4):
    """A few SAF-E steps on random data (rate target), then SAF off: the plain snnTorch model."""
    saf_plugin.set_saf(net, "E")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.rand(T, B, N_IN) * 1.5
        target = torch.rand(B, N_OUT)
        loss = ((run(net, x).mean(0) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    saf_plugin.set_saf(net, None)
    return net


def per_neuron_params_(net):
    """β, θ as vectors of the layer width (same values, same dynamics): the shapes nir's type
    inference needs. SAF itself wants scalars, so this is done after set_saf(net, None)."""
    width = {id(m): l.out_features for l, m in zip(net[::2], net[1::2])}
    for m in leakies(net):
        m.beta = m.beta.detach().expand(width[id(m)]).clone()
        m.threshold = m.threshold.detach().expand(width[id(m)]).clone()
    return net


def round_trip(net):
    graph = export_to_nir(net, torch.rand(1, N_IN), ignore_dims=[0])
    return graph, import_from_nir(graph)


@pytest.fixture
def trained():
    return train_saf_e(make_net())


@pytest.fixture
def x():
    return torch.rand(T, B, N_IN) * 1.5


def test_training_left_a_firing_plain_subtract_model(trained, x):
    assert not any(hasattr(m, "_saf_path") for m in trained.modules())
    assert all(m.reset_mechanism == "subtract" for m in leakies(trained))
    assert run(trained, x).sum() > 0


def test_snntorch_export_fails_nir_type_inference_on_scalar_leaky(trained):
    """Failure 1, the library's own error: scalar β/θ give a shape-() nir.LIF."""
    with pytest.raises(ValueError, match=r"type mismatch: 0\.output: \[\[16\]\] -> 1\.input: \[\]"):
        export_to_nir(trained, torch.rand(1, N_IN), ignore_dims=[0])


def test_nir_lif_has_hard_reset_only_and_import_builds_zero_reset(trained):
    """Failure 2: nothing in the NIR graph says 'subtract'; the importer rebuilds 'zero'."""
    own = [f.name for f in dataclasses.fields(nir.LIF)
           if f.name not in ("input_type", "output_type", "metadata")]
    assert own == ["tau", "r", "v_leak", "v_threshold", "v_reset"]
    graph, back = round_trip(per_neuron_params_(trained))
    lifs = [n for n in graph.nodes.values() if isinstance(n, nir.LIF)]
    assert len(lifs) == 2
    assert all((lif.v_reset == 0).all() for lif in lifs)
    imported = leakies(back)
    assert len(imported) == 2
    assert all(m.reset_mechanism == "zero" and m.reset_delay is False for m in imported)


def test_saf_trained_model_does_not_round_trip(trained, x):
    """The exported and re-imported SAF-trained model spikes differently (no error is raised)."""
    ref = run(trained, x)
    _, back = round_trip(per_neuron_params_(trained))
    got = run(back, x)
    assert ref.shape == got.shape
    assert not torch.equal(ref, got)


def test_reset_mechanism_is_the_only_loss(trained, x):
    """Control: the same weights with zero reset round-trip bit-exactly, and the re-imported
    model matches the SAF-trained one once its neurons are put back to snnTorch's default
    subtract reset (reset_delay=True) by hand."""
    zero = make_net("zero")
    zero.load_state_dict(trained.state_dict())
    for m in leakies(zero):  # the state dict carries reset_mechanism_val; keep 'zero'
        m.reset_mechanism = "zero"
    ref_zero = run(zero, x)
    _, back_zero = round_trip(per_neuron_params_(zero))
    assert torch.equal(run(back_zero, x), ref_zero)

    ref = run(trained, x)
    _, back = round_trip(per_neuron_params_(trained))
    for m in leakies(back):
        m.reset_mechanism = "subtract"
        m.state_function = m._base_sub
        m.reset_delay = True
    assert torch.equal(run(back, x), ref)
    assert not torch.equal(ref, ref_zero)
