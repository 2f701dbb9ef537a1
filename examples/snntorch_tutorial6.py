"""snnTorch tutorial 6 (a convolutional SNN on MNIST) trained with SAF.

Port of snnTorch's "Tutorial 6: Surrogate Gradient Descent in a Convolutional SNN": the same
``nn.Sequential`` CSNN (Conv 5x5 12 - MaxPool - Leaky - Conv 5x5 64 - MaxPool - Leaky - Linear -
Leaky(output=True)), ``beta=0.5``, ``fast_sigmoid(slope=25)``, ``init_hidden=True``, one call
per time step, ``SF.ce_rate_loss()``, Adam (lr 1e-2, betas (0.9, 0.999)), T = 50.

The network max-pools, which SAF does not reproduce exactly: under ``--saf E|F`` the script
prints ``saf_plugin.check`` and applies ``saf_plugin.fix`` (MaxPool2d -> AvgPool2d). Under
SAF-F the loss is cross-entropy on the spike representation at the last step.

    python examples/snntorch_tutorial6.py --saf E            # offline digits at 28x28
    python examples/snntorch_tutorial6.py --data mnist --download
"""

from __future__ import annotations


import snntorch as snn
import snntorch.functional as SF
import torch
import torch.nn.functional as F
from snntorch import surrogate
from torch import nn

import _common as C
import saf_plugin
from saf_plugin.training import prediction, reset_state


def build(beta=0.5, width=1) -> nn.Sequential:
    """Tutorial 6's network (``width`` divides the channel counts for quick runs)."""
    sg = surrogate.fast_sigmoid(slope=25)
    c1, c2 = max(12 // width, 1), max(64 // width, 1)
    return nn.Sequential(
        nn.Conv2d(1, c1, 5), nn.MaxPool2d(2),
        snn.Leaky(beta=beta, spike_grad=sg, init_hidden=True),
        nn.Conv2d(c1, c2, 5), nn.MaxPool2d(2),
        snn.Leaky(beta=beta, spike_grad=sg, init_hidden=True),
        nn.Flatten(), nn.Linear(c2 * 4 * 4, 10),
        snn.Leaky(beta=beta, spike_grad=sg, init_hidden=True, output=True))


def main(argv=None) -> str:
    p = C.base_parser(__doc__.splitlines()[0], data=("mnist", "fashion-mnist"), T=50,
                      batch_size=128, epochs=1, lr=1e-2)
    p.add_argument("--width", type=int, default=1, help="divide channel counts by this")
    args = p.parse_args(argv)
    C.seed_everything(args.seed)
    device = torch.device(args.device)
    net = build(width=args.width).to(device)
    if args.saf != "off":
        C.print_check(net)
        C.fix_and_report(net)
        saf_plugin.set_saf(net, args.saf)

    train, test, _ = C.load_data(args, size=(28, 28))
    train_loader, test_loader = C.loaders(args, train, test)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.999))
    ce_rate = SF.ce_rate_loss()

    def forward(x, y):
        reset_state(net)
        spk, _ = C.snntorch_unroll(net, C.static_to_seq(x, args.T))
        if args.saf == "F":
            return spk, F.cross_entropy(spk[-1], y)
        return spk, ce_rate(spk, y)

    task = C.Task(forward, lambda out: prediction(out, args.saf), lambda: reset_state(net))
    return C.train_and_report(
        "snntorch_tutorial6", net, task, args, train_loader, test_loader, opt, device)


if __name__ == "__main__":
    main()
