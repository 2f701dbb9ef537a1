"""snnTorch tutorial 6 (a convolutional SNN on MNIST) trained with SAF.

Port of snnTorch's "Tutorial 6: Surrogate Gradient Descent in a Convolutional SNN": the same
``nn.Sequential`` CSNN (Conv 5x5 12 - MaxPool - Leaky - Conv 5x5 64 - MaxPool - Leaky - Linear -
Leaky(output=True)), ``beta=0.5``, ``fast_sigmoid(slope=25)``, ``init_hidden=True``, one call
per time step, ``SF.ce_rate_loss()``, Adam (lr 1e-2, betas (0.9, 0.999)), T = 50.

The network is used as it is: under SAF-E the convolutions and the Linear run once per step on
accumulations, the max pooling per step on the real values, exactly (``saf_plugin.check``
prints which). ``--fix`` replaces the max pooling by average pooling first
(``saf_plugin.fix``), for every ``--saf``: a different network, whose pooling runs once per
step on accumulations. SAF-F is defined for linear maps between neurons only, so it refuses
the max pooling at the first call (``SAFIncompatibleError`` names it); with ``--fix`` it
trains, with cross-entropy on the spike representation at the last step.

On the offline digits the defaults are a quick setting (T = 5, 4 epochs, Adam lr 5e-3, batch
32, channels halved); on MNIST, the tutorial's.

    python examples/snntorch_tutorial6.py                    # SAF-E, offline digits at 28x28
    python examples/snntorch_tutorial6.py --saf off          # the same network with BPTT
    python examples/snntorch_tutorial6.py --data mnist --download
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


# the original's settings (real data) and the quick setting on the offline digits
RECIPE = dict(T=50, batch_size=128, epochs=1, lr=1e-2, width=1)
DIGITS = dict(T=5, batch_size=32, epochs=4, lr=5e-3, width=2)


def main(argv=None) -> str:
    p = C.base_parser(__doc__.splitlines()[0], data=("mnist", "fashion-mnist"),
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

    train, test, _ = C.load_data(args, size=(28, 28))
    train_loader, test_loader = C.loaders(args, train, test)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.999))
    ce_rate = SF.ce_rate_loss()

    def forward(x, y):
        utils.reset(net)
        spk, _ = C.snntorch_unroll(net, C.static_to_seq(x, args.T))
        if args.saf == "F":
            return spk, F.cross_entropy(spk[-1], y)
        return spk, ce_rate(spk, y)

    task = C.Task(forward, lambda out: prediction(out, args.saf), lambda: utils.reset(net))
    return C.train_and_report(
        "snntorch_tutorial6", net, task, args, train_loader, test_loader, opt, device)


if __name__ == "__main__":
    main()
