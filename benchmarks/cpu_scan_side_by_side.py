"""The C++ CPU scan side by side: one training iteration of BPTT, OTTT, SAF-E online, SAF-E
multi-step (C++ scan, and the torch scan via SAF_PLUGIN_NO_CPU_SCAN), SAF-F on OTTT's VGG
(full width, batch 16), interleaved repeats; wall time and this process's CPU time (run with
OMP_NUM_THREADS=1: CPU time then ignores waiting for a shared core). Ratios of medians and
medians of per-repeat (paired) ratios.

    OMP_NUM_THREADS=1 python benchmarks/cpu_scan_side_by_side.py 6,16 4 out.json
"""
import sys, os, time, torch, warnings, statistics, json
warnings.filterwarnings("ignore")
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from saf_plugin.bench.measure import machine, make_inputs
from saf_plugin.bench.models import VGG
from saf_plugin.bench.variants import make_runner, variant
Ts = [int(v) for v in sys.argv[1].split(",")]; R = int(sys.argv[2])
torch.manual_seed(0)
base = VGG(1)
inputs = {T: make_inputs([3,32,32], 16, T, torch.device("cpu")) for T in Ts}
def no_cpu(run):
    def f(x, y):
        os.environ["SAF_PLUGIN_NO_CPU_SCAN"] = "1"
        try: run(x, y)
        finally: del os.environ["SAF_PLUGIN_NO_CPU_SCAN"]
    return f
runs = {m: make_runner(m, variant(base, m)) for m in ("bptt", "ottt", "saf_e_online", "saf_e_multi", "saf_f")}
runs["saf_e_multi_torchscan"] = no_cpu(make_runner("saf_e_multi", variant(base, "saf_e_multi")))
wall = {(m, T): [] for m in runs for T in Ts}; cpu = {(m, T): [] for m in runs for T in Ts}
for r in range(R + 1):
    for T in Ts:
        for m, run in runs.items():
            t0 = time.perf_counter(); c0 = time.process_time(); run(*inputs[T])
            c1 = time.process_time(); t1 = time.perf_counter()
            if r: wall[(m, T)].append(t1 - t0); cpu[(m, T)].append(c1 - c0)
    print("repeat", r, file=sys.stderr, flush=True)
out = {"machine": machine(), "repeats": R, "warmup": 1, "batch": 16, "net": "OTTT VGG, full width",
       "rows": []}
for T in Ts:
    for m in runs:
        out["rows"].append({"method": m, "T": T, "wall_s": wall[(m, T)], "cpu_s": cpu[(m, T)],
                            "wall_median_s": statistics.median(wall[(m, T)]),
                            "cpu_median_s": statistics.median(cpu[(m, T)])})
def ratio(d, a, b, T):
    pr = [x / y for x, y in zip(d[(a, T)], d[(b, T)])]
    return statistics.median(d[(a, T)]) / statistics.median(d[(b, T)]), statistics.median(pr)
out["ratios"] = []
for T in Ts:
    for a, b in (("saf_e_multi", "bptt"), ("saf_e_multi_torchscan", "bptt"), ("saf_e_multi", "saf_e_multi_torchscan"),
                 ("saf_e_online", "ottt"), ("saf_f", "ottt")):
        rw, pw = ratio(wall, a, b, T); rc, pc = ratio(cpu, a, b, T)
        out["ratios"].append({"T": T, "ratio": f"{a}/{b}", "wall_of_medians": rw, "wall_paired_median": pw,
                              "cpu_of_medians": rc, "cpu_paired_median": pc})
        print(f"T={T} {a}/{b}: wall {rw:.3f} (paired {pw:.3f}), cpu {rc:.3f} (paired {pc:.3f})")
json.dump(out, open(sys.argv[3], "w"), indent=1)
