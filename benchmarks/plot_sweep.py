"""One figure from T sweeps of benchmarks/bench.py: time and memory per training iteration
against T, one row per network (``saf_plugin.bench.report.figure``).

    python benchmarks/plot_sweep.py benchmarks/results/sweep_vgg_w1_b16_cpu.json \\
        benchmarks/results/sweep_snntorch6_b64_cpu.json \\
        --memory-from benchmarks/results/sweep_vgg_w1_b16_cpu_T32_64.json \\
        --out docs/benchmarks/sweep_T.png
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saf_plugin.bench.report import figure  # noqa: E402

TITLES = {"vgg": "SpikingJelly: OTTT's CIFAR VGG (full width)",
          "snntorch6": "snnTorch: tutorial 6's CSNN (AvgPool; snnTorch has no OTTT)"}


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="JSON files written by bench.py")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks/sweep_T.png"))
    p.add_argument("--memory-from", type=Path, action="append", default=[],
                   help="another run of the same net: only its memory rows are added (a "
                   "fresh process each, so machine load does not change them)")
    args = p.parse_args(argv)
    results = [json.loads(f.read_text()) for f in args.results]
    for f in args.memory_from:
        extra = json.loads(f.read_text())
        res = next(r for r in results if r["config"]["net"] == extra["config"]["net"])
        have = {(r["method"], r["T"]) for r in res["rows"]}
        res["rows"] += [{k: v for k, v in r.items() if not k.startswith("time_")}
                        for r in extra["rows"] if (r["method"], r["T"]) not in have]
    titles = [f"{TITLES.get(r['config']['net'], r['config']['net'])}, batch "
              f"{r['config']['batch']}" for r in results]
    sources = [f.name for f in [*args.results, *args.memory_from]]
    out = figure(results, titles, sources, args.out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
