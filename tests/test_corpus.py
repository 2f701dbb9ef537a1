"""Issue 9's corpus: third-party models used as they are (no fix()), and one small model per
case listed under "Why". Each is run plainly and under SAF-E / SAF-F in both step modes where it
has them; the outcome must be exact (float64 within 1e-9; snnTorch float32: spikes equal, other
outputs within 1e-5) and revert bit for bit, or -- where the issue allows it -- a refusal by
set_saf that names the operation. See tests/corpus_harness.py for the rule, and
tests/corpus_models.py for the models and how their thresholds are set so every layer fires.

``TODAY`` lists the (case, mode, step mode) that fail on the engine as committed before the
data-flow rewrite (93a18a7): they are strict xfails, so they turn into failures (XPASS) the
moment the engine gets them right; delete their line then.
"""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import monitor

import corpus_models as CM
from corpus_harness import (FiringRecorder, assert_acceptable, assert_fires, judge, neurons,
                            prepared, run)
import saf_plugin

CASES = {c.name: c for c in CM.ZOO + CM.WHY}

# Outcomes on the engine before the rewrite (saf_plugin at 93a18a7), measured with this harness.
TODAY: dict[tuple[str, str, str], str] = {
    ("sj_spiking_resnet18", "E", "s"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_spiking_resnet18", "E", "m"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_sew_resnet18_ADD", "E", "s"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_sew_resnet18_ADD", "E", "m"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_sew_resnet18_AND", "E", "s"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_sew_resnet18_AND", "E", "m"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_sew_resnet18_IAND", "E", "s"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_sew_resnet18_IAND", "E", "m"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_ms_resnet18", "E", "m"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_spiking_vgg11_bn", "E", "s"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_spiking_vgg11_bn", "E", "m"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_spikformer", "E", "m"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_plif_MNISTNet", "E", "s"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_plif_MNISTNet", "E", "m"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_plif_NMNISTNet", "E", "s"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_plif_NMNISTNet", "E", "m"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_plif_CIFAR10Net", "E", "s"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_plif_CIFAR10Net", "E", "m"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_plif_CIFAR10DVSNet", "E", "s"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_plif_CIFAR10DVSNet", "E", "m"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_example_dvsgesture", "E", "s"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_example_dvsgesture", "E", "m"): "refused: BatchNorm in training mode / MaxPool",
    ("sj_example_csnn_soft_reset", "E", "m"): "refused: BatchNorm in training mode / MaxPool",
    ("snn_tutorial6_sequential", "E", "s"): "refused: MaxPool2d",
    ("snn_tutorial7_class", "E", "s"): "wrong max |diff| 1, 9 spike outputs differ",
    ("snn_tutorial7_sequential", "E", "s"): "refused: MaxPool2d",
    ("why_sew_AND", "E", "s"): "wrong max |diff| 0.263",
    ("why_sew_AND", "F", "s"): "wrong max |diff| 0.208",
    ("why_sew_AND", "E", "m"): "wrong max |diff| 0.252",
    ("why_sew_AND", "F", "m"): "wrong max |diff| 0.195",
    ("why_sew_IAND", "E", "s"): "wrong max |diff| 0.263",
    ("why_sew_IAND", "F", "s"): "wrong max |diff| 0.208",
    ("why_sew_IAND", "E", "m"): "wrong max |diff| 0.252",
    ("why_sew_IAND", "F", "m"): "wrong max |diff| 0.195",
    ("why_spike_attention", "E", "s"): "crash: RuntimeError: The size of tensor a (4) must match the size of tensor b",
    ("why_spike_attention", "F", "s"): "crash: RuntimeError: The size of tensor a (4) must match the size of tensor b",
    ("why_spike_attention", "E", "m"): "crash: RuntimeError: The size of tensor a (4) must match the size of tensor b",
    ("why_spike_attention", "F", "m"): "crash: RuntimeError: The size of tensor a (4) must match the size of tensor b",
    ("why_f_max_pool2d_class", "E", "s"): "wrong max |diff| 0.435",
    ("why_f_max_pool2d_class", "F", "s"): "wrong max |diff| 0.29",
    ("why_raw_input_skip", "E", "s"): "wrong max |diff| 1, 4 spike outputs differ",
    ("why_raw_input_skip", "F", "s"): "wrong max |diff| 0.857",
    ("why_raw_input_skip", "E", "m"): "wrong max |diff| 1, 4 spike outputs differ",
    ("why_raw_input_skip", "F", "m"): "wrong max |diff| 0.857",
    ("why_shared_neuron", "E", "s"): "wrong max |diff| 0.724",
    ("why_shared_neuron", "F", "s"): "wrong max |diff| 0.633",
    ("why_shared_neuron", "E", "m"): "wrong max |diff| 0.438",
    ("why_shared_neuron", "F", "m"): "wrong max |diff| 0.427",
    ("why_token_linear", "E", "s"): "wrong max |diff| 0.641",
    ("why_token_linear", "F", "s"): "wrong max |diff| 0.27",
    ("why_token_linear", "E", "m"): "wrong max |diff| 0.56",
    ("why_token_linear", "F", "m"): "wrong max |diff| 0.287",
    ("why_untraceable_mixed_tau", "E", "s"): "wrong max |diff| 0.244",
    ("why_untraceable_mixed_tau", "F", "s"): "wrong max |diff| 0.163",
    ("why_untraceable_mixed_tau", "E", "m"): "wrong max |diff| 0.269",
    ("why_untraceable_mixed_tau", "F", "m"): "wrong max |diff| 0.154",
    ("why_ends_in_neuron_float32", "E", "s"): "wrong max |diff| 1.19e-07, 40 spike outputs differ",
    ("why_ends_in_neuron_float32", "E", "m"): "wrong max |diff| 1.19e-07, 33 spike outputs differ",
    ("why_module_dict", "E", "s"): "SAFStateError while running: entry taken from registration order",
    ("why_module_dict", "F", "s"): "SAFStateError while running: entry taken from registration order",
    ("why_module_dict", "E", "m"): "SAFStateError while running: entry taken from registration order",
    ("why_module_dict", "F", "m"): "SAFStateError while running: entry taken from registration order",
    ("why_module_list", "E", "s"): "SAFStateError while running: entry taken from registration order",
    ("why_module_list", "F", "s"): "SAFStateError while running: entry taken from registration order",
    ("why_module_list", "E", "m"): "SAFStateError while running: entry taken from registration order",
    ("why_module_list", "F", "m"): "SAFStateError while running: entry taken from registration order",
    ("why_head_registered_first", "E", "s"): "SAFStateError while running: entry taken from registration order",
    ("why_head_registered_first", "F", "s"): "SAFStateError while running: entry taken from registration order",
    ("why_head_registered_first", "E", "m"): "SAFStateError while running: entry taken from registration order",
    ("why_head_registered_first", "F", "m"): "SAFStateError while running: entry taken from registration order",
    ("why_train_bn_maxpool", "E", "s"): "refused: BatchNorm in training mode / MaxPool",
    ("why_train_bn_maxpool", "E", "m"): "refused: BatchNorm in training mode / MaxPool",
    ("why_torch_dropout_per_step", "E", "s"): "refused: torch.nn.Dropout (per step)",
    ("why_torch_dropout_per_step", "E", "m"): "refused: torch.nn.Dropout (per step)",
}


def _params():
    """Grouped by (case, step mode): the firing check, then SAF-E, then SAF-F, so the model is
    built and run plainly once per group (corpus_harness.prepared)."""
    out = []
    for case in CM.ZOO + CM.WHY:
        for sm in case.step_modes:
            out.append(pytest.param(case.name, "fires", sm, id=f"{case.name}-{sm}-fires"))
            for mode in ("E", "F") if case.f_decay is not None else ("E",):
                reason = TODAY.get((case.name, mode, sm))
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                out.append(pytest.param(case.name, mode, sm, marks=marks,
                                        id=f"{case.name}-{sm}-SAF{mode}"))
    return out


@pytest.mark.parametrize("name,check,step_mode", _params())
def test_corpus(name, check, step_mode):
    """check "fires": the precondition, never xfailed (a layer that never or always fires would
    make the comparison vacuous; every neuron module must run). "E"/"F": the outcome rule."""
    case = CASES[name]
    if check == "fires":
        net, _, _, rates = prepared(case, step_mode)
        assert_fires(rates, name)
        assert rates.keys() == {n for n, _ in neurons(net)}, "a neuron module never ran"
        return
    assert_acceptable(case, check, judge(case, check, step_mode))


# --------------------------------------------------------------------------- hooks and monitors


@pytest.mark.parametrize("step_mode", ["s", "m"])
@pytest.mark.xfail(strict=True, reason="today hidden neurons emit accumulations under SAF: "
                   "hooks and OutputMonitor record them (firing rate 0.377 instead of 0.228)")
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
@pytest.mark.xfail(strict=True, reason="today an exit neuron de-accumulates in float32: "
                   "0.99999994 instead of 1")
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
