"""snnTorch tutorial 7 (N-MNIST through tonic) trained with SAF.

Port of snnTorch's "Tutorial 7: Neuromorphic Datasets with Tonic + snnTorch": the same
``nn.Sequential`` CSNN (Conv 5x5 12 - MaxPool - Leaky - Conv 5x5 32 - MaxPool - Leaky - Linear -
Leaky(output=True)) on 2x34x34 event frames, ``beta=0.5``, ``atan`` surrogate,
``SF.mse_count_loss(correct_rate=0.8, incorrect_rate=0.2)``, Adam (lr 2e-2, betas
(0.9, 0.999)). ``--data nmnist`` loads N-MNIST with ``tonic.datasets.NMNIST`` (tonic
downloads it) through ``Denoise(10000)`` and ``ToFrame(n_time_bins=T)``; the offline default
turns the digits into 34x34 event frames (``_common.digits_to_events``, saccade-like motion).

The network is used as it is (max pooling per step on the real values under SAF-E, exactly);
``--fix`` replaces the max pooling by average pooling first, for every ``--saf`` (a
different network). ``mse_count_loss`` does not decompose over steps, so SAF-E
backpropagates once through the stacked outputs. SAF-F refuses the max pooling; with
``--fix`` it takes the same loss on the rates, MSE(r[T−1], 0.8/0.2 targets) on the spike
representation.

On the offline digits the defaults are a quick setting (T = 3, 3 epochs, Adam lr 1e-2, batch
32, channels halved); on N-MNIST, the tutorial's.

    python examples/snntorch_tutorial7.py                    # SAF-E, offline digits as events
    python examples/snntorch_tutorial7.py --data nmnist --data-dir ./data
"""

from __future__ import annotations


import snntorch as snn
import snntorch.functional as SF
import torch
import torch.nn.functional as F
from snntorch import surrogate, utils
from torch import nn

import _common as C
import saf_plugin
from saf_plugin.training import prediction


def build(beta=0.5, width=1) -> nn.Sequential:
    sg = surrogate.atan()
    c1, c2 = max(12 // width, 1), max(32 // width, 1)
    return nn.Sequential(
        nn.Conv2d(2, c1, 5), nn.MaxPool2d(2),
        snn.Leaky(beta=beta, spike_grad=sg, init_hidden=True),
        nn.Conv2d(c1, c2, 5), nn.MaxPool2d(2),
        snn.Leaky(beta=beta, spike_grad=sg, init_hidden=True),
        nn.Flatten(), nn.Linear(c2 * 5 * 5, 10),
        snn.Leaky(beta=beta, spike_grad=sg, init_hidden=True, output=True))


# the original's settings (real data) and the quick setting on the offline digits
RECIPE = dict(T=25, batch_size=128, epochs=1, lr=2e-2, width=1)
DIGITS = dict(T=3, batch_size=32, epochs=3, lr=1e-2, width=2)


def main(argv=None) -> str:
    p = C.base_parser(__doc__.splitlines()[0], data=("nmnist",),
                      recipe=RECIPE, digits=DIGITS)
    C.preset(p, "--width", "divide the channel counts by this", type=int)
    C.fix_option(p)
    args = C.parse(p, argv)
    C.seed_everything(args.seed)
    device = torch.device(args.device)
    net = build(width=args.width).to(device)
    if args.fix:  # a different model (average pooling), for every --saf
        C.fix_and_report(net)
    if args.saf != "off":
        C.print_check(net)
        saf_plugin.set_saf(net, args.saf)

    train, test, _ = C.load_data(args, size=(34, 34), events=True)
    train_loader, test_loader = C.loaders(args, train, test)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.999))
    mse_count = SF.mse_count_loss(correct_rate=0.8, incorrect_rate=0.2)

    def forward(x, y):
        utils.reset(net)
        spk, _ = C.snntorch_unroll(net, C.events_to_seq(x))
        if args.saf == "F":
            target = torch.full_like(spk[-1], 0.2).scatter_(1, y[:, None], 0.8)
            return spk, F.mse_loss(spk[-1], target)
        return spk, mse_count(spk, y)

    task = C.Task(forward, lambda out: prediction(out, args.saf), lambda: utils.reset(net))
    return C.train_and_report(
        "snntorch_tutorial7", net, task, args, train_loader, test_loader, opt, device)


if __name__ == "__main__":
    main()
