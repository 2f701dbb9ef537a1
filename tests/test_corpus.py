"""The corpus: third-party models used as they are (no fix()), and one small model per
case SAF must get right (``corpus_models.WHY``). Each is run plainly and under SAF-E / SAF-F in both step modes where it
has them; the outcome must be exact (float64 within 1e-9; snnTorch float32: spikes equal, other
outputs within 1e-5) and revert bit for bit, or -- where the case allows it -- a refusal by
set_saf that names the operation. See tests/corpus_harness.py for the rule, and
tests/corpus_models.py for the models and how their thresholds are set so every layer fires.
"""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import monitor

import corpus_models as CM
from corpus_harness import FiringRecorder, assert_fires, check_case, params, run
import saf_plugin

CASES = {c.name: c for c in CM.ZOO + CM.WHY}

# Outcomes on the engine before the rewrite (saf_plugin at 93a18a7), measured with this harness.


@pytest.mark.parametrize("name,check,step_mode", params(CM.ZOO + CM.WHY))
def test_corpus(name, check, step_mode):
    check_case(CASES[name], check, step_mode)


# --------------------------------------------------------------------------- hooks and monitors


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_hooks_and_output_monitor_record_real_spikes(step_mode):
    """Forward hooks and SpikingJelly's monitor.OutputMonitor on hidden neurons record the same
    spikes (hence the same firing rate) under SAF-E as in the plain model."""
    case = CASES["why_hooks_on_hidden_neurons"]
    net, x = case.build(step_mode)

    def record():
        rec = FiringRecorder(net)
        mon = monitor.OutputMonitor(net, CM.neuron.LIFNode)
        try:
            out = run(net, x, step_mode)
        finally:
            rec.remove()
        records = [r.clone() for r in mon.records]
        mon.remove_hooks()
        return out, rec.rates(), records

    ref, ref_rates, ref_records = record()
    assert_fires(ref_rates)
    saf_plugin.set_saf(net, "E")
    try:
        out, rates, records = record()
    finally:
        saf_plugin.set_saf(net, None)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)
    assert rates == ref_rates
    assert len(records) == len(ref_records) > 0
    for got, want in zip(records, ref_records):
        assert torch.equal(got, want)


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_output_neuron_emits_exact_spikes_in_float32(step_mode):
    """A model that ends in a neuron returns 0/1 exactly (so `== 1` and `.long()` counts hold)."""
    case = CASES["why_ends_in_neuron_float32"]
    net, x = case.build(step_mode)
    ref = run(net, x, step_mode)
    assert ref.dtype == torch.float32 and 0 < float(ref.detach().mean()) < 1
    saf_plugin.set_saf(net, "E")
    try:
        out = run(net, x, step_mode)
    finally:
        saf_plugin.set_saf(net, None)
    assert bool(((out == 0) | (out == 1)).all()), out[(out != 0) & (out != 1)][:5]
    assert int((out == 1).sum()) == int((ref == 1).sum())
    assert torch.equal(out, ref)


def test_reset_helper_resets_both_libraries():
    """The harness resets with the libraries' own mechanisms: two runs give the same output."""
    for name in ("why_module_list", "snn_tutorial5_sequential"):
        case = CASES[name]
        net, x = case.build("s")
        a, b = run(net, x, "s", case.whole), run(net, x, "s", case.whole)
        for u, v in zip(a if isinstance(a, tuple) else [a], b if isinstance(b, tuple) else [b]):
            assert torch.equal(u, v)
