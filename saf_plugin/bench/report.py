"""The benchmark's output: ratios between methods, the text table, JSON/CSV files, plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

from .methods import METHODS


def ratios(rows: list[dict]) -> list[dict]:
    """Per T, SAF-E and SAF-F against OTTT, BPTT and the ReLU bound: ratios of median times,
    of peak RSS, of the RSS increase in the iteration and of the bytes saved for backward
    (None where a method is missing). Adds ``rss_increase_bytes`` to the rows that have both."""
    for r in rows:
        if "peak_rss_bytes" in r and "rss_before_bytes" in r:
            r["rss_increase_bytes"] = r["peak_rss_bytes"] - r["rss_before_bytes"]
    by = {(r["method"], r["T"]): r for r in rows}
    out = []
    for T in sorted({r["T"] for r in rows}):
        def q(a, b, key="time_median_s"):
            ra, rb = by.get((a, T)), by.get((b, T))
            if not ra or not rb or key not in ra or key not in rb or not rb[key]:
                return None
            return ra[key] / rb[key]
        out.append({"T": T,
                    "saf_e_online/ottt time": q("saf_e_online", "ottt"),
                    "saf_e_online/relu time": q("saf_e_online", "relu"),
                    "saf_f/ottt time": q("saf_f", "ottt"),
                    "saf_e_multi/bptt time": q("saf_e_multi", "bptt"),
                    "saf_e_online/ottt peak rss": q("saf_e_online", "ottt", "peak_rss_bytes"),
                    "saf_e_online/ottt rss increase": q("saf_e_online", "ottt",
                                                        "rss_increase_bytes"),
                    "saf_e_online/ottt saved": q("saf_e_online", "ottt", "saved_peak_bytes"),
                    "saf_e_online/bptt time": q("saf_e_online", "bptt"),
                    "saf_f/bptt time": q("saf_f", "bptt"),
                    "saf_e_online/bptt saved": q("saf_e_online", "bptt", "saved_peak_bytes")})
    return out


def table(rows: list[dict]) -> str:
    head = f"{'method':<13} {'T':>3} {'time med [s]':>12} {'min-max [s]':>17} {'saved [MB]':>10} {'peak RSS [MB]':>13}"
    lines = [head, "-" * len(head)]
    for r in rows:
        saved = r.get("saved_peak_bytes")
        rss = r.get("cuda_peak_bytes", r.get("peak_rss_bytes"))
        lines.append(f"{r['method']:<13} {r['T']:>3} {r['time_median_s']:>12.4f} "
                     f"{r['time_min_s']:>8.4f}-{r['time_max_s']:<8.4f} "
                     f"{'' if saved is None else f'{saved / 2**20:.1f}':>10} "
                     f"{'' if rss is None else f'{rss / 2**20:.0f}':>13}")
    return "\n".join(lines)


def write(result: dict, name: str, results_dir: Path, plot_dir: Optional[Path]) -> list[Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    result["ratios"] = ratios(result["rows"])
    paths = [results_dir / f"{name}.json", results_dir / f"{name}.csv"]
    paths[0].write_text(json.dumps(result, indent=1))
    keys = sorted({k for r in result["rows"] for k in r})
    with open(paths[1], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(result["rows"])
    if plot_dir is not None:
        paths += plot(result, name, plot_dir)
    return paths


def plot(result: dict, name: str, plot_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    methods += sorted({r["method"] for r in rows} - set(methods))
    out = []
    specs = [("time", [("time_median_s", "time per iteration [s]", 1.0)]),
             ("memory", [("peak_rss_bytes", "peak RSS of a fresh process [MiB]", 2**20),
                         ("saved_peak_bytes", "saved for backward, peak [MiB]", 2**20)])]
    for kind, panels in specs:
        panels = [p for p in panels if any(p[0] in r for r in rows)]
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, (key, label, scale) in zip(axes[0], panels):
            for m in methods:
                pts = sorted((r["T"], r[key] / scale, r) for r in rows
                             if r["method"] == m and key in r)
                if not pts:
                    continue
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                if key == "time_median_s":
                    lo = [p[1] - p[2]["time_min_s"] for p in pts]
                    hi = [p[2]["time_max_s"] - p[1] for p in pts]
                    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=m)
                else:
                    ax.plot(xs, ys, marker="o", label=m)
            ts = sorted({r["T"] for r in rows})
            if ts[-1] >= 8 * ts[0]:  # a sweep over T: log axes, T labelled as measured
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xticks(ts, [str(t) for t in ts])
            ax.set_xlabel("T (time steps)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        cfg = result["config"]
        fig.suptitle(f"{cfg['net']} (width/{cfg['width_div']}), batch {cfg['batch']}, "
                     f"{result['machine'].get('gpu') or result['machine'].get('cpu_model', 'CPU')}",
                     fontsize=9)
        fig.tight_layout()
        p = plot_dir / f"{name}_{kind}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p)
    return out
