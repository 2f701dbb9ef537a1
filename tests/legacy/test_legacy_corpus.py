"""The corpus on SpikingJelly 0.0.0.0.14's model zoo (the legacy environment,
scripts/ci_legacy.sh): spiking_resnet18, sew_resnet18 (ADD, IAND), spiking_vgg11_bn in training
mode, parametric_lif_net's networks. Same harness and outcome rule as tests/test_corpus.py
(tests/corpus_harness.py): float64, every neuron layer firing, both step modes; exact within 1e-9
and reverted bit for bit, or (SAF-F only, for models with per-step operations) a refusal by
set_saf naming the operation.

The zoo's neurons default to a hard reset (v_reset=0.), which SAF runs per step (SAF-E; SAF-F
refuses it, needing the closed form); the zoo constructors take the neuron class and its
arguments, so the models are built with ``spiking_neuron=neuron.LIFNode`` /
``ParametricLIFNode`` and ``v_reset=None`` (the closed form) and, for two, with the defaults.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from spikingjelly.activation_based import neuron

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared harness

from corpus_harness import Case, check_case, params  # noqa: E402
from corpus_models import L05, NONLIN, PER_STEP_NEURON, SEW, _images, _ready  # noqa: E402

SOFT = dict(spiking_neuron=neuron.LIFNode, v_reset=None)


def spiking_resnet18(step_mode, neuron_kw=SOFT):
    from spikingjelly.activation_based.model import spiking_resnet

    return _ready(spiking_resnet.spiking_resnet18(num_classes=10, **neuron_kw), _images(3, 16),
                  step_mode)


def spiking_resnet18_hard(step_mode):
    return spiking_resnet18(step_mode, dict(spiking_neuron=neuron.LIFNode))


def sew_resnet18(cnf):
    def build(step_mode):
        from spikingjelly.activation_based.model import sew_resnet

        return _ready(sew_resnet.sew_resnet18(num_classes=10, cnf=cnf, **SOFT), _images(3, 16),
                      step_mode)
    return build


def spiking_vgg11_bn(step_mode):
    from spikingjelly.activation_based.model import spiking_vgg

    return _ready(spiking_vgg.spiking_vgg11_bn(num_classes=10, **SOFT), _images(3, 32),
                  step_mode)


def plif_net(cls_name, in_c, size, hard=False):
    def build(step_mode):
        from spikingjelly.activation_based.model import parametric_lif_net

        kw = {} if hard else dict(v_reset=None)
        net = getattr(parametric_lif_net, cls_name)(
            channels=4, spiking_neuron=neuron.ParametricLIFNode, **kw)
        return _ready(net, _images(in_c, size), step_mode)
    return build


LEGACY = [
    Case("legacy_spiking_resnet18", spiking_resnet18, refuse_f=NONLIN, f_decay=L05),
    Case("legacy_spiking_resnet18_hard_reset", spiking_resnet18_hard, refuse_f=PER_STEP_NEURON,
         f_decay=L05),
    Case("legacy_sew_resnet18_ADD", sew_resnet18("ADD"), refuse_f=NONLIN, f_decay=L05),
    Case("legacy_sew_resnet18_IAND", sew_resnet18("IAND"), refuse_f=SEW, f_decay=L05),
    Case("legacy_spiking_vgg11_bn", spiking_vgg11_bn),  # SAF-E only (see tests/corpus_models.py)
    Case("legacy_plif_MNISTNet", plif_net("MNISTNet", 1, 28), refuse_f=NONLIN, f_decay=L05),
    Case("legacy_plif_MNISTNet_hard_reset", plif_net("MNISTNet", 1, 28, hard=True),
         refuse_f=PER_STEP_NEURON, f_decay=L05),
    Case("legacy_plif_CIFAR10Net", plif_net("CIFAR10Net", 3, 32), refuse_f=NONLIN,
         f_decay=L05),
    Case("legacy_plif_DVSGestureNet", plif_net("DVSGestureNet", 2, 128), refuse_f=NONLIN,
         f_decay=L05),
]
CASES = {c.name: c for c in LEGACY}



@pytest.mark.parametrize("name,check,step_mode", params(LEGACY))
def test_legacy_corpus(name, check, step_mode):
    check_case(CASES[name], check, step_mode)
