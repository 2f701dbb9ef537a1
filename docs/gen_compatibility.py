"""Regenerate docs/compatibility.md from saf_plugin's registry.

    python docs/gen_compatibility.py          # rewrite the page
    tests/test_docs.py fails when the committed page is stale.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

PAGE = Path(__file__).with_name("compatibility.md")

NOTES = {  # judge / repair function name -> (status, reason, fix)
    "judge_neuron": ("exact with soft reset", "hard reset has no closed form in accumulations",
                     "`saf_plugin.fix` switches to soft reset"),
    "judge_batchnorm": ("exact in eval mode, approximate in train mode",
                        "batch statistics of the growing accumulations",
                        "weight-standardised conv, `.eval()`, or `strict=False`"),
    "judge_dropout": ("exact in eval mode, approximate in train mode",
                      "a new mask at every step", "SpikingJelly `layer.Dropout` (one mask per sequence)"),
    "judge_leaky": ("exact with reset_mechanism='subtract' (either reset_delay)",
                    "reset 'zero' (hard reset) has no closed form; 'none' works with SAF-E only",
                    "use reset_mechanism='subtract'"),
    "judge_maxpool": ("approximate", "max of accumulations is not the accumulation of maxima",
                      "`saf_plugin.fix` replaces it by average pooling"),
}


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
        judge = getattr(spec.judge, "__name__", None)
        if judge in NOTES:
            status, reason, fix = NOTES[judge]
        elif spec.role == "container":
            status, reason, fix = "exact", "container: its children are checked", ""
        elif spec.role == "neuron" and spec.neuron is None:
            status, reason, fix = ("unsupported", "a neuron model SAF has no closed form for",
                                   "use Leaky / LIF neurons")
        elif spec.role == "neuron":
            status, reason, fix = "exact", "spiking neuron", ""
        elif spec.role == "linear":
            status = "exact"
            reason = "affine: the shift carries c[t]" if spec.shift else "linear map"
            fix = ""
        else:
            status, reason, fix = "approximate", f"{spec.role} map", "see `saf_plugin.check`"
        if judge and judge not in NOTES and judge != "<lambda>":
            reason += f" (judged at run time by `{judge}`)"
        out.append((f"`{cls.__module__}.{cls.__qualname__}`", lib, status, reason, fix))
    return sorted(out, key=lambda r: (r[1], r[0]))


def render() -> str:
    lines = ["# Compatibility", "",
             "Generated from `saf_plugin.registry` by `docs/gen_compatibility.py` "
             "(do not edit by hand). Classes not listed are reported as unsupported by "
             "`saf_plugin.check`; declare your own linear maps with "
             "`saf_plugin.register_linear`. Subclasses inherit an entry unless they override "
             "its dynamics.", "",
             "| module | library | status | reason | fix |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    PAGE.write_text(render())
    print(f"wrote {PAGE}")
