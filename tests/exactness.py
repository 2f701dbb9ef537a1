"""Helpers for the exactness tests (test_time_axis, test_made_tensors, test_state_reads,
test_lifecycle): run a small model plainly, under SAF and switched back, and compare.

Public API only (``set_saf``, ``check``); state is reset with the libraries' own mechanisms
(:func:`corpus_harness.reset`), the RNG re-seeded before every run so random masks are the same
in the plain and the SAF run. The rule: outputs within 1e-9 in float64 (SAF-F: the
spike representation of the plain outputs), every neuron layer firing at a rate strictly between
0 and 1, and ``set_saf(net, None)`` restoring the plain forward bit for bit. A refusal raises
out of :func:`assert_exact` and fails the test with saf-plugin's message.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

import saf_plugin
from corpus_harness import (SEED, FiringRecorder, _stack, assert_fires, calibrate, neurons,
                            outputs, representation, reset)

ATOL = 1e-9


def run_seq(net: nn.Module, x, step_mode: str, *, whole: bool = False,
            before: Optional[Callable[[nn.Module], None]] = None) -> list[torch.Tensor]:
    """Reset (library mechanisms, then ``before(net)`` for a model's own counters), seed, run:
    one call on the whole sequence (step mode 'm' or ``whole``), else one call per step;
    outputs stacked to [T, ...], as a list (one entry per output)."""
    reset(net)
    if before is not None:
        before(net)
    torch.manual_seed(SEED)
    if whole or step_mode == "m":
        return outputs(net(x))
    return outputs(_stack([net(xt) for xt in x]))


def ready(net: nn.Module, x, step_mode: str, *, whole: bool = False, before=None,
          first: Optional[int] = 1) -> nn.Module:
    """Calibrate every neuron's threshold on the first ``first`` steps (None: all of x)."""
    part = x if first is None else x[:first]
    calibrate(net, lambda: run_seq(net, part, step_mode, whole=whole, before=before))
    return net


def plain_with_rates(net, x, step_mode, **kw):
    rec = FiringRecorder(net)
    try:
        ref = run_seq(net, x, step_mode, **kw)
    finally:
        rec.remove()
    rates = rec.rates()
    assert_fires(rates, type(net).__name__)
    assert rates.keys() == {n for n, _ in neurons(net)}, ("a neuron module never ran", rates)
    return [r.detach() for r in ref]


def assert_close_list(got, ref, atol=ATOL, where=""):
    assert len(got) == len(ref), (where, len(got), len(ref))
    for g, r in zip(got, ref):
        assert torch.is_tensor(g), (where, type(g))
        assert g.shape == r.shape and g.dtype == r.dtype, (where, g.shape, r.shape, g.dtype,
                                                          r.dtype)
        d = float((g.detach().double() - r.detach().double()).abs().max()) if g.numel() else 0.0
        assert d <= atol, f"{where}: max |diff| {d:.3g} > {atol}"


def assert_exact(net: nn.Module, x, step_mode: str, mode: str = "E", *, whole: bool = False,
                 before=None, f_decay: Optional[float] = None, atol: float = ATOL) -> float:
    """Plain run (every neuron layer fires), SAF run, reverted run; SAF's outputs equal the
    plain ones within ``atol`` and the reverted model's bit for bit. Returns the max diff."""
    kw = dict(whole=whole, before=before)
    ref = plain_with_rates(net, x, step_mode, **kw)
    saf_plugin.set_saf(net, mode)
    try:
        got = run_seq(net, x, step_mode, **kw)
    finally:
        saf_plugin.set_saf(net, None)
    back = run_seq(net, x, step_mode, **kw)
    assert len(back) == len(ref) and all(torch.equal(a.detach(), b) for a, b in zip(back, ref)), \
        "set_saf(net, None) did not restore the plain forward bit for bit"
    if mode == "F":
        assert f_decay is not None and len(ref) == 1
        ref = [representation(ref[0], f_decay)]
    assert_close_list(got, ref, atol, f"SAF-{mode} step mode {step_mode!r}")
    return max(float((g.detach() - r).abs().max()) for g, r in zip(got, ref))


def routes(findings) -> dict[str, set[str]]:
    """{operation: {route}} of check(net, x)'s per-operation findings; the route is "on
    accumulations" (the linear-map saving), "on per-step values" or "per step"."""
    out: dict[str, set[str]] = {}
    for f in findings:
        if "(in module" in f.path:
            out.setdefault(f.module, set()).add(
                "on accumulations" if "on accumulations" in f.reason else
                "on per-step values" if "on per-step values" in f.reason else "per step")
    return out


def root_routes(findings) -> dict[str, set[str]]:
    """The same for operations written in the model's own forward (module ``<root>``)."""
    return routes([f for f in findings if "(in module <root>)" in f.path])
