"""One figure from T sweeps of benchmarks/bench.py: time and memory per training iteration
against T (log axes), one row per library.

    python benchmarks/plot_sweep.py benchmarks/results/sweep_vgg_w1_b16_cpu.json \
        benchmarks/results/sweep_snntorch6_b64_cpu.json --out docs/benchmarks/sweep_T.png
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"bptt": ("BPTT", "tab:red", "o"), "ottt": ("OTTT", "tab:orange", "s"),
         "saf_e_online": ("SAF-E online", "tab:blue", "^"), "saf_f": ("SAF-F", "tab:green", "v")}
PANELS = [("time_median_s", "time per iteration [s]", 1.0),
          ("saved_peak_bytes", "saved for backward, peak [MiB]", 2**20),
          ("rss_increase_bytes", "peak RSS increase in the iteration [MiB]", 2**20)]
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
    for extra in map(lambda f: json.loads(f.read_text()), args.memory_from):
        res = next(r for r in results if r["config"]["net"] == extra["config"]["net"])
        have = {(r["method"], r["T"]) for r in res["rows"]}
        res["rows"] += [{k: v for k, v in r.items() if not k.startswith("time_")}
                        for r in extra["rows"] if (r["method"], r["T"]) not in have]
    fig, axes = plt.subplots(len(results), len(PANELS), figsize=(15, 4.2 * len(results)),
                             squeeze=False)
    for row, res in zip(axes, results):
        cfg, rows = res["config"], res["rows"]
        for r in rows:
            if "peak_rss_bytes" in r and "rss_before_bytes" in r:
                r["rss_increase_bytes"] = r["peak_rss_bytes"] - r["rss_before_bytes"]
        ts = sorted({r["T"] for r in rows})
        for ax, (key, label, scale) in zip(row, PANELS):
            for m, (name, color, marker) in STYLE.items():
                pts = sorted((r["T"], r) for r in rows if r["method"] == m and key in r)
                if not pts:
                    continue
                xs = [t for t, _ in pts]
                ys = [r[key] / scale for _, r in pts]
                if key == "time_median_s":
                    err = [[y - r["time_min_s"] for y, (_, r) in zip(ys, pts)],
                           [r["time_max_s"] - y for y, (_, r) in zip(ys, pts)]]
                    ax.errorbar(xs, ys, yerr=err, color=color, marker=marker, capsize=3,
                                label=name)
                else:
                    ax.plot(xs, ys, color=color, marker=marker, label=name)
                stop = res.get("stopped", {}).get(m)
                if key == "time_median_s" and stop is not None and stop < max(ts):
                    ax.annotate("next T > limit", (xs[-1], ys[-1]), fontsize=7, color=color,
                                xytext=(4, -10), textcoords="offset points")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(ts, [str(t) for t in ts])
            ax.set_xlabel("T (time steps)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3, which="both")
        title = TITLES.get(cfg["net"], cfg["net"])
        row[0].set_title(f"{title}, batch {cfg['batch']}", fontsize=9, loc="left")
        row[0].legend(fontsize=8)
    cpu = results[0]["machine"].get("gpu") or results[0]["machine"].get("cpu_model", "CPU")
    fig.suptitle(f"One training iteration against T ({cpu}; medians, bars min-max)", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
