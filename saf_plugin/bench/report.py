"""The benchmark's output: ratios between methods, the text table, JSON/CSV files, plots."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Optional


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
                    "saf_e_online/plain_step time": q("saf_e_online", "plain_step"),
                    "saf_f/plain_step time": q("saf_f", "plain_step"),
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


# method: label, colour, marker, filled (hollow markers show what is drawn over them)
STYLE = {"bptt": ("BPTT", "tab:red", "o", True), "ottt": ("OTTT", "tab:orange", "s", False),
         "sltt": ("SLTT", "tab:purple", "D", False),
         "saf_e_online": ("SAF-E online", "tab:blue", "^", True),
         "saf_e_multi": ("SAF-E multi-step", "tab:cyan", "<", False),
         "saf_f": ("SAF-F", "tab:green", "v", True), "relu": ("ReLU bound", "tab:gray", "x", True)}
PANELS = {"time": ("time_median_s", "time per iteration [s]", 1.0),
          "saved": ("saved_peak_bytes", "saved for backward, peak [MiB]", 2**20),
          "rss": ("rss_increase_bytes", "RSS increase in the iteration [MiB]", 2**20),
          "cuda": ("cuda_peak_bytes", "CUDA peak allocated [MiB]", 2**20)}


def machine_label(machine: dict) -> str:
    """The machine a result comes from, as figures and pages name it: the GPU's name, or
    e.g. "2-core Intel Xeon"."""
    if machine.get("gpu"):
        return machine["gpu"]
    words = re.sub(r"\(R\)|\(TM\)|Processor|CPU|@.*", " ", machine.get("cpu_model", "CPU")).split()
    return f"{machine.get('cpu_count', '?')}-core {' '.join(words[:2])}"


def figure(results: list[dict], titles: list[str], sources: list[str], path: Path) -> Path:
    """Time and memory against T, one row per result (a network), one column per measure,
    one legend. A sweep over T has a log T axis and log times; memory starts at 0. The PNG carries its sources
    and machine in its metadata ("Source", "Machine"), which tests/test_docs.py reads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    machines = {machine_label(r["machine"]) for r in results}
    if len(machines) != 1:
        raise ValueError(f"one figure, one machine: these results come from {sorted(machines)}")
    for res in results:
        ratios(res["rows"])  # adds rss_increase_bytes
    keys = [k for k, (key, _, _) in PANELS.items() if any(key in r for res in results
                                                          for r in res["rows"])]
    ts = sorted({r["T"] for res in results for r in res["rows"]})
    log = ts[-1] >= 8 * ts[0]
    fig, axes = plt.subplots(len(results), len(keys), figsize=(4.6 * len(keys), 3.6 * len(results)),
                             squeeze=False, sharex=True)
    handles = {}
    for row, res, title in zip(axes, results, titles):
        methods = [m for m in STYLE if any(r["method"] == m for r in res["rows"])]
        for ax, k in zip(row, keys):
            _panel(ax, k, res["rows"], methods, ts, log, handles)
        row[0].set_title(title, fontsize=9, loc="left")
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles),
               frameon=False)
    fig.suptitle(f"One training iteration against T, {machines.pop()}"
                 + (" (median, bars min-max)" if "time" in keys else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Source": " ".join(sources),
                                         "Machine": machine_label(results[0]["machine"])})
    plt.close(fig)
    return path


def _panel(ax, k: str, rows: list[dict], methods: list[str], ts: list[int], log: bool,
           handles: dict) -> None:
    """One panel of :func:`figure`: measure ``k`` of each method against T (``handles``
    collects the legend's entries)."""
    key, label, scale = PANELS[k]
    for i, m in enumerate(methods):
        pts = sorted((r["T"], r) for r in rows if r["method"] == m and key in r)
        if not pts:
            continue
        name, colour, marker, filled = STYLE[m]
        off = i - (len(methods) - 1) / 2  # side by side, so equal values stay visible
        xs = [t * 2 ** (0.05 * off) if log else t + 0.02 * off * (ts[-1] - ts[0] or 1)
              for t, _ in pts]
        ys = [r[key] / scale for _, r in pts]
        kw = dict(color=colour, marker=marker, markersize=6, linewidth=1.2,
                  markerfacecolor=colour if filled else "none", label=name)
        if key == "time_median_s":
            err = [[y - r["time_min_s"] for y, (_, r) in zip(ys, pts)],
                   [r["time_max_s"] - y for y, (_, r) in zip(ys, pts)]]
            handles[name] = ax.errorbar(xs, ys, yerr=err, capsize=2, **kw)
        else:
            handles[name] = ax.plot(xs, ys, **kw)[0]
    if log:
        ax.set_xscale("log", base=2)
    if log and k == "time":
        ax.set_yscale("log")
    else:  # memory from 0: a spread of a few MiB stays a few MiB high
        ax.set_ylim(bottom=0)
    ax.set_xticks(ts, [str(t) for t in ts])
    ax.tick_params(labelbottom=True)
    ax.set_xlabel("T (time steps)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, which="both")


def plot(result: dict, name: str, plot_dir: Path) -> list[Path]:
    """``<plot_dir>/<name>.png``: the figure of one benchmark run."""
    cfg = result["config"]
    title = f"{cfg['net']}" + (f" (width/{cfg['width_div']})" if cfg.get("width_div", 1) != 1
                                else "") + f", batch {cfg['batch']}"
    return [figure([result], [title], [f"{name}.json"], plot_dir / f"{name}.png")]
