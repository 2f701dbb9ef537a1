"""The corpus harness: run a third-party model plainly and under SAF, and judge the outcome.

Written against saf-plugin's public API only (``set_saf``, ``SAFError``), so it judges whatever
engine is behind it. Library mechanisms reset state (SpikingJelly ``functional.reset_net``,
snnTorch ``utils.reset`` plus each neuron's ``reset_mem``); nothing of saf-plugin's is used to
run or reset a model. Works with SpikingJelly 2.0 and 0.0.0.0.14 (tests/legacy imports it).

The rule: for each model and SAF mode the outcome is either

- ``exact``: the outputs equal the plain model's within 1e-9 in float64 (SAF-E: the per-step
  outputs; SAF-F: the spike representation r[t] = (Σ_k λ^(t−k) o[k]) / c[t] of the plain
  per-step outputs o, c[t] = Σ_{k≤t} λ^k), and ``set_saf(net, None)`` restores the plain
  forward bit for bit; or
- ``refused``: a saf-plugin error before any output, whose message names the operation (a
  per-case regular expression), after which the model runs its plain forward bit for bit --
  and only for cases where a refusal is allowed (the case's ``refuse`` patterns). "Before any output" is ``set_saf``
  itself, or the model's first call, provided that call returns nothing and leaves the model
  switched back (``saf_mode(net) is None``): a refusal must come "before any output is
  produced", and an engine that analyses the model by recording its first real forward can
  only refuse there.

Anything else -- outputs that differ (``wrong``), an unrelated exception (``crash``), a saf-plugin
error raised after an output was returned or leaving the model switched (``runtime-error``) --
fails.

float32 (snnTorch, whose surrogates emit float32 spikes): every output whose plain values are all
0 or 1 (spikes) must be equal exactly; other outputs (membranes) within atol = rtol = 1e-5.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

import saf_plugin

SEED = 1234  # re-seeded before every run, so dropout masks are the same in every run
ATOL64 = 1e-9
TOL32 = 1e-5


# --------------------------------------------------------------------------- neurons


def neuron_types() -> tuple[type, ...]:
    """The neuron base classes of the libraries that are imported."""
    import sys

    types = []
    sj = sys.modules.get("spikingjelly.activation_based.neuron")
    if sj is not None:
        types.append(sj.BaseNode)
    sn = sys.modules.get("snntorch._neurons.neurons")
    if sn is not None:
        types.append(sn.SpikingNeuron)
    return tuple(types)


def neurons(net: nn.Module) -> list[tuple[str, nn.Module]]:
    kinds = neuron_types()
    return [(n, m) for n, m in net.named_modules() if isinstance(m, kinds)]


def _first(out):
    return out[0] if isinstance(out, (list, tuple)) else out


class FiringRecorder:
    """Forward hooks on every neuron: per neuron module, the mean of everything it emitted."""

    def __init__(self, net: nn.Module):
        self.sums: dict[str, list] = {}
        self.hooks = [m.register_forward_hook(self._hook(name)) for name, m in neurons(net)]

    def _hook(self, name):
        def hook(module, inputs, output):
            s = _first(output).detach()
            acc = self.sums.setdefault(name, [0.0, 0])
            acc[0] += float(s.double().sum())
            acc[1] += s.numel()
        return hook

    def rates(self) -> dict[str, float]:
        return {k: s / n for k, (s, n) in self.sums.items()}

    def remove(self):
        for h in self.hooks:
            h.remove()


# --------------------------------------------------------------------------- thresholds


def _decay_input_scale(m: nn.Module) -> float:
    """What a SpikingJelly neuron multiplies its input by (1/τ with decay_input, else 1)."""
    if not getattr(m, "decay_input", False):
        return 1.0
    if hasattr(m, "w") and torch.is_tensor(m.w):  # ParametricLIFNode: 1/τ = sigmoid(w)
        return float(m.w.detach().sigmoid())
    return 1.0 / float(m.tau)


def _set_threshold(m: nn.Module, theta: float) -> None:
    if hasattr(m, "v_threshold"):  # SpikingJelly (asserts a float)
        m.v_threshold = float(theta)
    else:  # snnTorch: a buffer (or a parameter if learnable)
        with torch.no_grad():
            m.threshold.fill_(theta)


def _threshold_from(x: Tensor, quantile: float) -> Optional[float]:
    """A threshold between two distinct input values near the quantile (never on a value, so no
    membrane starts exactly at the threshold); None if the input has no positive values."""
    v = torch.unique(x.detach().double().flatten())  # sorted
    if v.numel() < 2 or v[-1] <= 0:
        return None
    k = min(int(quantile * (v.numel() - 1)), v.numel() - 2)
    k = max(k, int((v <= 0).sum()) - 1, 0)  # a positive threshold
    return float((v[k] + v[k + 1]) / 2)


def calibrate(net: nn.Module, run: Callable[[], object], *, quantile: float = 0.75) -> None:
    """Set every neuron's threshold from its own first input (in execution order, so each
    neuron sees inputs shaped by the thresholds already set upstream), so that every neuron
    layer fires at a rate strictly between 0 and 1 (a layer that never fires makes a
    comparison vacuous); the model is otherwise used as it is."""
    done: set[int] = set()

    def pre(module, args):
        if id(module) in done or not args or not torch.is_tensor(args[0]):
            return
        done.add(id(module))
        theta = _threshold_from(args[0] * _decay_input_scale(module), quantile)
        if theta is None:
            raise AssertionError(f"{type(module).__name__} gets no positive input: cannot fire")
        _set_threshold(module, theta)

    hooks = [m.register_forward_pre_hook(pre) for _, m in neurons(net)]
    try:
        with torch.no_grad():
            torch.manual_seed(SEED)
            run()
    finally:
        for h in hooks:
            h.remove()


# --------------------------------------------------------------------------- running


def reset(net: nn.Module) -> None:
    """Reset state with the libraries' own mechanisms (never saf-plugin's)."""
    import sys

    sj_base = sys.modules.get("spikingjelly.activation_based.base")
    if sj_base is not None and any(isinstance(m, sj_base.MemoryModule) for m in net.modules()):
        from spikingjelly.activation_based import functional

        functional.reset_net(net)
    sn = sys.modules.get("snntorch._neurons.neurons")
    if sn is not None:
        snn_neurons = [m for m in net.modules() if isinstance(m, sn.SpikingNeuron)]
        if snn_neurons:
            from snntorch import utils

            utils.reset(net)
            for m in snn_neurons:
                m.reset_mem()


def _stack(outs: list):
    if isinstance(outs[0], (list, tuple)):
        return tuple(torch.stack([o[i] for o in outs]) for i in range(len(outs[0])))
    return torch.stack(outs)


def run(net: nn.Module, x, step_mode: str, whole: bool = False, calls: Optional[list] = None):
    """Reset, then run: the whole sequence in one call (step mode 'm', or a model that loops over
    time itself), else one call per step on x[t]; outputs stacked to [T, ...]. ``calls`` gets
    one entry per call that returned."""
    calls = [] if calls is None else calls
    reset(net)
    torch.manual_seed(SEED)
    if whole or step_mode == "m":
        out = net(x)
        calls.append(1)
        return out
    outs = []
    for xt in x:
        outs.append(net(xt))
        calls.append(1)
    return _stack(outs)


def outputs(out) -> list[Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def representation(o: Tensor, decay: float) -> Tensor:
    """r[t] = (Σ_k λ^(t−k) o[k]) / c[t], c[t] = Σ_{k≤t} λ^k: SAF-F's output for plain outputs o."""
    acc, c, rs = torch.zeros_like(o[0]), 0.0, []
    for t in range(o.shape[0]):
        acc = decay * acc + o[t]
        c = decay * c + 1.0
        rs.append(acc / c)
    return torch.stack(rs)


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One corpus model.

    build(step_mode) -> (net, x): the model (thresholds calibrated, dtype set) and its input.
    whole:     the model takes the whole sequence in one call (it loops over time itself).
    refuse:    regex; a refusal of SAF-E whose message matches it is acceptable (None: SAF-E must
               be exact).
    refuse_f:  the same for SAF-F (defaults to ``refuse``).
    f_decay:   λ of the neurons feeding the output; SAF-F is judged only where it is given (a
               model that aggregates its output over time inside forward has no per-step
               spike representation to compare with).
    """

    name: str
    build: Callable[[str], tuple[nn.Module, object]]
    step_modes: tuple[str, ...] = ("s", "m")
    whole: bool = False
    refuse: Optional[str] = None
    refuse_f: Optional[str] = None
    f_decay: Optional[float] = None
    note: str = ""
    tags: set = field(default_factory=set)

    def refusal_pattern(self, mode: str) -> Optional[str]:
        return self.refuse_f if (mode == "F" and self.refuse_f is not None) else self.refuse


@dataclass
class Outcome:
    kind: str  # exact | refused | wrong | crash | runtime-error | not-reverted
    detail: str = ""
    max_diff: float = 0.0
    message: str = ""  # a refusal's whole message

    def __str__(self):
        return f"{self.kind} {self.detail}".strip()


def max_diff(a: list[Tensor], b: list[Tensor]) -> float:
    if len(a) != len(b):
        return float("inf")
    d = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return float("inf")
        d = max(d, float((x.detach().double() - y.detach().double()).abs().max()))
    return d


def _close(ref: list[Tensor], got: list[Tensor]) -> bool:
    if len(ref) != len(got):
        return False
    for r, g in zip(ref, got):
        if r.shape != g.shape or r.dtype != g.dtype:
            return False
        if r.dtype == torch.float64:
            if not torch.allclose(g, r, rtol=0, atol=ATOL64):
                return False
        elif bool(((r == 0) | (r == 1)).all()):  # spikes: exactly
            if not torch.equal(g, r):
                return False
        elif not torch.allclose(g, r, rtol=TOL32, atol=TOL32):
            return False
    return True


def plain_run(case: Case, net: nn.Module, x, step_mode: str):
    """The plain run and each neuron layer's firing rate."""
    rec = FiringRecorder(net)
    try:
        ref = run(net, x, step_mode, case.whole)
    finally:
        rec.remove()
    return ref, rec.rates()


def assert_fires(rates: dict[str, float], where: str = "") -> None:
    assert rates, f"{where}: no neuron layer ran"
    bad = {k: r for k, r in rates.items() if not 0.0 < r < 1.0}
    assert not bad, f"{where}: neuron layers that never or always fire (vacuous test): {bad}"


_PLAIN: dict = {}  # the last (case, step mode) built: model, input, plain outputs, rates


def prepared(case: Case, step_mode: str):
    """Build the model and run it plainly; kept for the next mode of the same (case, step
    mode) -- only the latest one is kept, and only while every run restored it exactly."""
    key = (case.name, step_mode)
    if key not in _PLAIN:
        _PLAIN.clear()
        net, x = case.build(step_mode)
        ref, rates = plain_run(case, net, x, step_mode)
        _PLAIN[key] = (net, x, outputs(ref), rates)
    return _PLAIN[key]


def judge(case: Case, mode: str, step_mode: str) -> Outcome:
    """Run the plain model, the SAF model and the reverted model; classify what happened."""
    net, x, ref, rates = prepared(case, step_mode)
    outcome = _judge(case, net, x, ref, rates, mode, step_mode)
    if outcome.kind not in ("exact", "refused", "wrong"):
        _PLAIN.clear()  # the model may be left in any state
    return outcome


def _judge(case, net, x, ref, rates, mode, step_mode) -> Outcome:
    assert_fires(rates, case.name)
    try:
        saf_plugin.set_saf(net, mode)
    except saf_plugin.SAFError as e:
        back = outputs(run(net, x, step_mode, case.whole))
        if not all(torch.equal(a, b) for a, b in zip(back, ref)):
            return Outcome("not-reverted", "a refused set_saf changed the model")
        lines = str(e).splitlines()
        return Outcome("refused", " | ".join(line.strip() for line in lines[:3])[:400],
                       message=str(e))
    except Exception as e:  # noqa: BLE001 - any other exception is the "crash" outcome
        return Outcome("crash", f"set_saf: {type(e).__name__}: {str(e)[:200]}")
    failed, calls = None, []
    try:
        got = outputs(run(net, x, step_mode, case.whole, calls=calls))
    except saf_plugin.SAFError as e:
        if not calls and saf_plugin.saf_mode(net) is None:  # refused at the first call
            back = outputs(run(net, x, step_mode, case.whole))
            if not all(torch.equal(a, b) for a, b in zip(back, ref)):
                return Outcome("not-reverted", "a refusal at the first call changed the model")
            lines = str(e).splitlines()
            return Outcome("refused", "(at the first call) " + " | ".join(
                line.strip() for line in lines[:3])[:400], message=str(e))
        failed = Outcome("runtime-error", f"{type(e).__name__} after {len(calls)} calls "
                         f"returned: {str(e)[:300]}")
    except Exception as e:  # noqa: BLE001
        failed = Outcome("crash", f"run: {type(e).__name__}: {str(e)[:300]}")
    try:
        saf_plugin.set_saf(net, None)
    except Exception as e:  # noqa: BLE001
        return failed or Outcome("crash", f"set_saf(None): {type(e).__name__}: {e}")
    if failed is not None:
        return failed
    back = outputs(run(net, x, step_mode, case.whole))
    if not all(torch.equal(a, b) for a, b in zip(back, ref)) or len(back) != len(ref):
        return Outcome("not-reverted", "set_saf(net, None) did not restore the plain forward")
    if mode == "F":
        assert case.f_decay is not None and len(ref) == 1
        ref = [representation(ref[0], case.f_decay)]
    d = max_diff(ref, got)
    if _close(ref, got):
        return Outcome("exact", f"max |diff| {d:.1e}", d)
    flips = ""
    if len(ref) == len(got) and all(r.shape == g.shape for r, g in zip(ref, got)):
        n = sum(int((r != g).sum()) for r, g in zip(ref, got) if bool(((r == 0) | (r == 1)).all()))
        flips = f", {n} spike outputs differ" if n else ""
    return Outcome("wrong", f"max |diff| {d:.3g}{flips}", d)


def assert_acceptable(case: Case, mode: str, outcome: Outcome) -> None:
    """Exact, or (where the case allows it) a refusal naming the operation."""
    if outcome.kind == "exact":
        return
    pattern = case.refusal_pattern(mode)
    if outcome.kind == "refused":
        assert pattern is not None, (
            f"{case.name} SAF-{mode}: refused, but this case must be exact: {outcome.detail}")
        assert re.search(pattern, outcome.message), (
            f"{case.name} SAF-{mode}: the refusal does not name the operation "
            f"(/{pattern}/): {outcome.detail}")
        return
    raise AssertionError(f"{case.name} SAF-{mode}: {outcome}")


# --------------------------------------------------------------------------- the parametrised test


def params(cases) -> list:
    """Grouped by (case, step mode): the firing check, then SAF-E, then SAF-F, so the model is
    built and run plainly once per group (:func:`prepared`)."""
    import pytest

    out = []
    for case in cases:
        for sm in case.step_modes:
            out.append(pytest.param(case.name, "fires", sm, id=f"{case.name}-{sm}-fires"))
            for mode in ("E", "F") if case.f_decay is not None else ("E",):
                out.append(pytest.param(case.name, mode, sm, id=f"{case.name}-{sm}-SAF{mode}"))
    return out


def check_case(case: Case, check: str, step_mode: str) -> None:
    """check "fires": the precondition (a layer that never or always fires would make the
    comparison vacuous; every neuron module must run). "E"/"F": the outcome rule."""
    if check == "fires":
        net, _, _, rates = prepared(case, step_mode)
        assert_fires(rates, case.name)
        assert rates.keys() == {n for n, _ in neurons(net)}, "a neuron module never ran"
        return
    assert_acceptable(case, check, judge(case, check, step_mode))
