"""The main job: a small SpikingJelly conv SNN on scikit-learn's handwritten digits, trained
once with ordinary BPTT and once after ``set_saf(net, "E")`` (online, per-step backward).

    python -m saf_plugin.demo [--epochs 5] [--T 8] [--batch-size 64] [--device cpu]

The digits (1797 images, 8x8) ship with scikit-learn: nothing is downloaded. Prints test
accuracy, seconds per epoch and peak memory for each method. Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU; on a CPU it is the peak of the bytes autograd
holds for backward (``torch.autograd.graph.saved_tensors_hooks``), the part of the memory that
grows with the number of time steps.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from . import set_saf
from .training import SavedTensorMeter, train_step


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


def train_epoch(net, x, y, optimizer, T: int, batch_size: int) -> None:
    """One epoch of :func:`saf_plugin.train_step`: BPTT for the plain model (step mode 'm',
    one backward through time), a backward at every step under SAF-E (step mode 's')."""
    net.train()
    for i in range(0, len(y), batch_size):
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
    return (out.argmax(1) == y).float().mean().item()


def run(method: str, args) -> dict:
    from spikingjelly.activation_based import functional

    torch.manual_seed(args.seed)
    x_tr, y_tr, x_te, y_te = digits(args.device, args.seed)
    net = conv_snn().to(args.device)
    step_mode = "m" if method == "bptt" else "s"
    functional.set_step_mode(net, step_mode)
    if method == "saf-e":
        set_saf(net, "E")
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    with SavedTensorMeter(exclude=[x_tr]) as meter:  # bytes held for backward
        for _ in range(args.epochs):
            start = time.perf_counter()
            train_epoch(net, x_tr, y_tr, optimizer, args.T, args.batch_size)
            seconds.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else meter.peak)
    acc = accuracy(net, x_te, y_te, args.T, step_mode)
    if method == "saf-e":
        set_saf(net, None)  # deploy as the ordinary spiking model: same weights, same spikes
        acc_plain = accuracy(net, x_te, y_te, args.T, step_mode)
        assert abs(acc_plain - acc) < 0.02, (acc, acc_plain)
    return {"method": method, "accuracy": acc, "s_per_epoch": sum(seconds) / len(seconds),
            "peak_mib": peak / 2**20}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--T", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    memory = "max_memory_allocated" if args.device.startswith("cuda") else "peak saved-for-backward"
    print(f"digits (scikit-learn, offline), conv SNN, T={args.T}, {args.epochs} epochs, {args.device}")
    rows = []
    for method in ("bptt", "saf-e"):
        r = run(method, args)
        rows.append(r)
        print(f"{r['method']:>6}: accuracy {100 * r['accuracy']:.1f}%  "
              f"{r['s_per_epoch']:.2f} s/epoch  peak memory {r['peak_mib']:.2f} MiB ({memory})")
    return rows


if __name__ == "__main__":
    main()
