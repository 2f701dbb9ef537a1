"""Run snnTorch's own tests (copied from its repository, see README.md) with saf-plugin present.

Only collected when ``SAF_UPSTREAM_MODE`` is set (``tests/test_snntorch_upstream.py`` sets it):

- ``import``:    ``saf_plugin`` and its snnTorch adapter are imported (registry filled).
- ``roundtrip``: additionally every ``snn.Leaky`` (and subclass) is, right after construction,
                 converted with ``set_saf(..., "E")``, run for two SAF steps, reverted with
                 ``set_saf(..., None)`` and given back its original ``mem`` buffer. Neurons SAF
                 refuses (reset "zero", inhibition, state_quant, per-neuron beta, DeltaLeaky) are
                 only checked (the refusal itself must leave them untouched).
"""

import os

import pytest

MODE = os.environ.get("SAF_UPSTREAM_MODE")
collect_ignore_glob = [] if MODE else ["*.py"]

if MODE:
    import snntorch as snn
    import torch
    from torch import nn

    import saf_plugin
    from saf_plugin.registry import load_adapters

    load_adapters()
    assert "saf_plugin.adapters.snntorch" in __import__("sys").modules

if MODE == "roundtrip":
    _COUNTS = {"converted": 0, "refused": 0}
    _init = snn.Leaky.__init__

    def _init_and_round_trip(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        if type(self) is not snn.Leaky and type(self).__init__ is not _init_and_round_trip:
            return  # a subclass is still constructing: it is checked by its own refusal
        holder = nn.Sequential(nn.Identity(), self)
        try:
            saf_plugin.set_saf(holder, "E")
        except saf_plugin.SAFIncompatibleError:
            _COUNTS["refused"] += 1
            assert "_saf_ctx" not in vars(self)
            return
        mem, training = self.mem, self.training
        try:
            with torch.no_grad():
                x = torch.full((2, 3), 1.5)
                self.mem = torch.zeros(0)
                holder(x)
                holder(x)
        finally:
            saf_plugin.set_saf(holder, None)
        self.mem = mem
        self.train(training)
        assert type(self) is snn.Leaky and not any(k.startswith("_saf") for k in vars(self))
        _COUNTS["converted"] += 1

    snn.Leaky.__init__ = _init_and_round_trip

    def pytest_terminal_summary(terminalreporter):
        terminalreporter.write_line(
            f"saf-plugin round trips: {_COUNTS['converted']} converted, {_COUNTS['refused']} refused")
