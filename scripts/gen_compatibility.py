"""Regenerate docs/compatibility.md from saf_plugin's registry and the engine's operation tables.

    python scripts/gen_compatibility.py       # rewrite the page
    tests/test_docs.py fails when the committed page is stale.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "compatibility.md"


def operations() -> list[tuple[str, str, str]]:
    from saf_plugin import dataflow as R

    def names(xs):
        return ", ".join(f"`{x}`" for x in sorted(xs))

    return [
        ("linear, conv (1d/2d/3d, transposed)", "on accumulations",
         "once per step; a bias is scaled by the series c[t]"),
        (names(R._POOL), "on accumulations", "average pooling is linear"),
        ("`batch_norm` in eval mode (running statistics)", "on accumulations",
         "affine: its shift is scaled by c[t]"),
        ("`+`, `-` of branches and constants; `*`, `/` by constants; `@` with a constant; "
         "`sum`/`mean` over non-time dims; `cat`/`stack` of one decay", "on accumulations",
         "branches of different decays are accumulated again with the receiver's decay"),
        (names(R._SHAPE - {"getitem", "alias"}) + ", indexing",
         "shape", "applied to the value (and a spike's accumulation); in step mode 'm' an "
         "operation that moves or indexes the time axis runs per step"),
        ("dropout in eval mode or with p = 0; SpikingJelly `layer.Dropout` (one mask per "
         "sequence)", "shape / on accumulations", "the identity, or a product with a constant"),
        ("everything else: `max_pool*`, `batch_norm` in training mode, dropout in training "
         "mode, products of two input-dependent tensors (SEW AND/IAND, attention), "
         "activations, unknown functions", "per step",
         "runs on the real per-step values: exact, element-wise extra work; SAF-F refuses it "
         "(at the first call, naming it)"),
    ]


_CLOSED = {"LIFNode", "IFNode", "ParametricLIFNode", "OTTTLIFNode", "SLTTLIFNode", "Leaky"}


def _neuron_route(cls, spec):
    """The route a neuron class takes (closed form where it has one, else per step)."""
    if cls.__name__ in _CLOSED:
        soft = "`v_reset=None`" if cls.__module__.startswith("spikingjelly") else (
            "`reset_mechanism='subtract'` or `'none'`, scalar β and θ, no inhibition or "
            "state_quant")
        return ("exact", f"closed form with {soft}; otherwise per step (SAF-E only)",
                "`fix(net, soft_reset=True)` for the closed form (changes the model)")
    return ("exact", "per step: its own step on the de-accumulated input current, state "
            "detached (SAF-E only; SAF-F refuses it)", "")


def _static(spec) -> bool:
    try:
        return spec.judge is not None and bool(spec.judge(None)[1])
    except Exception:  # noqa: BLE001 - a judge that needs a module
        return False


def rows() -> list[tuple[str, str, str, str, str]]:
    from saf_plugin import registry

    for lib in ("spikingjelly", "snntorch"):
        try:
            importlib.import_module(lib)
        except ImportError:
            pass
    registry.load_adapters()
    out = []
    for cls, spec in registry._REGISTRY.items():
        lib = cls.__module__.split(".")[0]
        if spec.role == "neuron" and spec.neuron is not None and spec.neuron.closed_form is None:
            status, reason, fix = "exact", "closed form in accumulations", ""
        elif spec.role == "neuron" and spec.neuron is not None:
            status, reason, fix = _neuron_route(cls, spec)
        elif spec.role == "neuron":
            status, reason, fix = spec.judge(None) if _static(spec) else (
                "unsupported", "a neuron model saf-plugin has no route for",
                "`saf_plugin.register_neuron` (docs/extending.md)")
        elif spec.role == "stateful":
            status, reason, fix = ("unsupported", "a stateful module that is not a neuron; "
                                   "SAF does not know its dynamics",
                                   "`saf_plugin.register_neuron` if it is a neuron")
        elif spec.role == "container":
            status = "exact"
            reason = "container: its children and their operations count"
            fix = ""
        elif spec.fix is not None:
            status, reason, fix = ("exact", "runs per step", "`saf_plugin.fix` replaces it by "
                                   "average pooling (runs on accumulations, faster)")
        else:
            status, reason, fix = "exact", "judged by its operations", ""
        if spec.methods:
            reason += "; under SAF: " + ", ".join(f"`{m}` cached" for m in spec.methods)
        out.append((f"`{cls.__module__}.{cls.__qualname__}`", lib, status, reason, fix))
    return sorted(out, key=lambda r: (r[1], r[0]))


def render() -> str:
    lines = ["# Compatibility", "",
             "Generated from `saf_plugin.registry` and `saf_plugin.runtime` by "
             "`scripts/gen_compatibility.py` (do not edit by hand).", "",
             "## Operations", "",
             "saf-plugin reads the data flow of a model's forward: every operation between "
             "neurons (in modules, functional calls or tensor methods) is routed by what it "
             "is, not by the module that runs it. `saf_plugin.check(net, example_input)` lists "
             "the route of each operation of your model.", "",
             "| operation | route | note |", "|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in operations()]
    lines += ["", "## Classes saf-plugin knows", "",
              "Neurons and stateful modules are known by class; subclasses inherit an entry "
              "unless they override its dynamics (a SpikingJelly `BaseNode` subclass then runs "
              "per step). A neuron runs SAF's closed form where it has one, else per step: its "
              "input current is de-accumulated, I[t] = Y[t] − λ Y[t−1], and its own one-step "
              "forward runs with its state detached (outputs equal the plain model's; SAF-E's "
              "gradient is OTTT's, its weights see the trace with λ below). A stateful "
              "SpikingJelly module that is not listed is refused; any other module is judged "
              "by its operations. Your own neurons and layers: docs/extending.md.", "",
              "λ (the trace decay of a per-step neuron's input weights): 1 − 1/τ for neurons "
              "with a τ, 1 − sigmoid(w) for ParametricLIF, 1 for IF-like neurons, CUBALIF's "
              "`c_decay`, a recurrent container's inner neuron's; snnTorch: β (Leaky, RLeaky), "
              "α (Synaptic, RSynaptic), 1 − Δt/(RC) (Lapicque).", "",
              "| module | library | status | reason | fix |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    PAGE.write_text(render())
    print(f"wrote {PAGE}")
