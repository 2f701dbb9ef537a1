"""Train a small spiking network twice, with BPTT and with SAF-E, and compare.

    python -m saf_plugin.demo [--epochs 5] [--T 8] [--batch-size 64] [--device cpu]

The network is a SpikingJelly conv SNN (Conv-LIF-AvgPool x2, Linear readout) on
scikit-learn's handwritten digits (1,797 images of 8x8, shipped with scikit-learn: nothing
is downloaded). Two copies with the same initial weights are trained side by side:

- bptt: backpropagation through time, SpikingJelly's usual training: the whole sequence of
  T steps runs forward, then one backward goes through all of them.
- saf-e: the same model after ``saf_plugin.set_saf(net, "E")`` (Spike Accumulation
  Forwarding, every-step variant): a backward at every step, so autograd never holds more
  than one step.

The epochs of the two methods alternate (interleaved), after a warm-up that is not timed, so
both see the same machine load; the time per epoch is reported as the median and the
min-max over the epochs. Accuracy is measured on a held-out 20 % of the digits that training
never sees. Peak memory is the most bytes autograd kept for backward at any moment
(``saf_plugin.training.SavedTensorMeter``; ``torch.cuda.max_memory_allocated`` on a GPU):
the part of training memory that grows with T under BPTT.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from . import set_saf
from .training import SavedTensorMeter, train_step

METHODS = ("bptt", "saf-e")
LEGEND = """\
  bptt    backpropagation through time: all T steps forward, then one backward through them
  saf-e   the same model after set_saf(net, "E"): a backward at every step (Spike
          Accumulation Forwarding), memory independent of T
  accuracy      on the held-out 20 % of the digits (360 images never trained on)
  s/epoch       median (min-max) over the epochs; the two methods' epochs alternate
  peak memory   the most bytes autograd kept for backward at once ({memory})"""


def say(msg: str = "", end: str = "\n") -> None:
    print(msg, end=end, flush=True)


def digits(device: str, seed: int = 0):
    """(x_train, y_train, x_test, y_test): [N, 1, 8, 8] in [0, 1], an 80/20 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm].to(device), y[perm].to(device)
    n = int(0.8 * len(y))
    return x[:n], y[:n], x[n:], y[n:]


def conv_snn() -> nn.Module:
    """Conv-LIF-AvgPool x2 and a linear readout; soft-reset LIF (τ = 2), SpikingJelly layers."""
    from spikingjelly.activation_based import layer, neuron

    def lif():
        return neuron.LIFNode(tau=2.0, decay_input=False, v_reset=None)

    return nn.Sequential(
        layer.Conv2d(1, 16, 3, padding=1), lif(), layer.AvgPool2d(2),
        layer.Conv2d(16, 32, 3, padding=1), lif(), layer.AvgPool2d(2),
        layer.Flatten(), layer.Linear(32 * 2 * 2, 10))


def train_epoch(net, x, y, optimizer, T: int, batch_size: int, max_batches: int = 0,
                progress: bool = False) -> None:
    """One epoch of :func:`saf_plugin.train_step`: BPTT for the plain model (step mode 'm',
    one backward through time), a backward at every step under SAF-E (step mode 's').
    With ``progress`` a dot is printed per batch."""
    net.train()
    for k, i in enumerate(range(0, len(y), batch_size)):
        if max_batches and k >= max_batches:
            break
        if progress:
            say(".", end="")
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        x_seq = xb.unsqueeze(0).expand(T, *xb.shape)  # direct encoding: the image every step
        train_step(net, x_seq, yb, lambda out, target: F.cross_entropy(out, target) / T,
                   optimizer)


@torch.no_grad()
def accuracy(net, x, y, T: int, step_mode: str) -> float:
    from spikingjelly.activation_based import functional

    net.eval()
    functional.reset_net(net)
    if step_mode == "m":
        out = net(x.unsqueeze(0).repeat(T, 1, 1, 1, 1)).mean(0)
    else:
        out = sum(net(x) for _ in range(T)) / T
    functional.reset_net(net)
    return (out.argmax(1) == y).float().mean().item()


def build(method: str, args) -> tuple[nn.Module, torch.optim.Optimizer, str]:
    from spikingjelly.activation_based import functional

    torch.manual_seed(args.seed)  # the same initial weights for both methods
    net = conv_snn().to(args.device)
    step_mode = "m" if method == "bptt" else "s"
    functional.set_step_mode(net, step_mode)
    if method == "saf-e":
        set_saf(net, "E")
    return net, torch.optim.Adam(net.parameters(), lr=args.lr), step_mode


def run(args) -> list[dict]:
    x_tr, y_tr, x_te, y_te = digits(args.device, args.seed)
    cuda = args.device.startswith("cuda")
    models = {m: build(m, args) for m in METHODS}
    say(f"warm-up (not timed): {args.warmup_batches} batches per method ... ", end="")
    for m, (net, opt, _) in models.items():
        train_epoch(net, x_tr, y_tr, opt, args.T, args.batch_size, args.warmup_batches)
    say("done")
    seconds = {m: [] for m in METHODS}
    peak = {m: 0 for m in METHODS}
    say("training: one dot per batch of the epoch")
    for epoch in range(args.epochs):
        order = METHODS if epoch % 2 == 0 else METHODS[::-1]  # alternate who goes first
        for m in order:
            net, opt, _ = models[m]
            say(f"epoch {epoch + 1}/{args.epochs} {m:<5} ", end="")
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            with SavedTensorMeter(exclude=[x_tr]) as meter:  # bytes held for backward
                start = time.perf_counter()
                train_epoch(net, x_tr, y_tr, opt, args.T, args.batch_size, progress=True)
                if cuda:
                    torch.cuda.synchronize()
                seconds[m].append(time.perf_counter() - start)
            peak[m] = max(peak[m], torch.cuda.max_memory_allocated() if cuda else meter.peak)
            say(f" {seconds[m][-1]:.2f} s")
    rows = []
    for m, (net, _, step_mode) in models.items():
        row = {"method": m, "accuracy": accuracy(net, x_te, y_te, args.T, step_mode),
               "s_per_epoch": statistics.median(seconds[m]), "s_min": min(seconds[m]),
               "s_max": max(seconds[m]), "seconds": seconds[m], "peak_mib": peak[m] / 2**20}
        if m == "saf-e":
            set_saf(net, None)  # deploy as the ordinary spiking model: same weights, same spikes
            row["accuracy_as_plain_lif"] = accuracy(net, x_te, y_te, args.T, step_mode)
        rows.append(row)
    return rows


def summary(rows: list[dict], args) -> str:
    """What the table means, in words."""
    by = {r["method"]: r for r in rows}
    b, s = by["bptt"], by["saf-e"]
    gap = 100 * (s["accuracy"] - b["accuracy"])
    lines = [f"Accuracy (held-out): saf-e {100 * s['accuracy']:.1f} %, bptt "
             f"{100 * b['accuracy']:.1f} %: " + (
                 "about the same." if abs(gap) <= 3 else
                 f"{abs(gap):.1f} points apart after {args.epochs} epochs; short runs vary, "
                 "try --epochs 10.")]
    lines.append(f"Switched back with set_saf(net, None), the saf-e model is the ordinary LIF "
                 f"network with the same weights: {100 * s['accuracy_as_plain_lif']:.1f} %.")
    if b["peak_mib"]:
        lines.append(f"Memory for backward: saf-e {s['peak_mib']:.2f} MiB, bptt "
                     f"{b['peak_mib']:.2f} MiB ({s['peak_mib'] / b['peak_mib']:.2f}x) at "
                     f"T={args.T}; bptt's grows in proportion to T, saf-e's stays the same.")
    overlap = s["s_min"] <= b["s_max"] and b["s_min"] <= s["s_max"]
    lines.append(f"Time: saf-e {s['s_per_epoch'] / b['s_per_epoch']:.2f}x bptt per epoch "
                 "(medians)" + ("; the ranges overlap, so on this run the difference is within "
                                "the noise." if overlap else ".")
                 + " This network is tiny, so per-step overhead dominates; docs/benchmarks.md "
                 "compares larger models.")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per method")
    parser.add_argument("--T", type=int, default=8, help="time steps per image")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch")
    parser.add_argument("--lr", type=float, default=1e-2, help="learning rate (Adam)")
    parser.add_argument("--warmup-batches", type=int, default=3,
                        help="untimed batches per method before the timed epochs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the split")
    args = parser.parse_args(argv)
    memory = ("torch.cuda.max_memory_allocated" if args.device.startswith("cuda")
              else "saf_plugin.training.SavedTensorMeter")
    say(f"SAF demo: a conv SNN on scikit-learn's digits (offline), T={args.T} time steps, "
        f"{args.epochs} epochs per method, {args.device}")
    rows = run(args)
    say()
    say(f"{'method':<7} {'accuracy':>9} {'s/epoch':>8} {'(min-max)':>13} {'peak memory':>12}")
    for r in rows:
        spread = f"({r['s_min']:.2f}-{r['s_max']:.2f})"
        say(f"{r['method']:<7} {100 * r['accuracy']:>8.1f}% {r['s_per_epoch']:>8.2f} "
            f"{spread:>13} {r['peak_mib']:>8.2f} MiB")
    say()
    say(LEGEND.format(memory=memory))
    say()
    say(summary(rows, args))
    return rows


if __name__ == "__main__":
    main()
