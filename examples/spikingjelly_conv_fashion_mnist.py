"""SpikingJelly's ``conv_fashion_mnist`` CSNN, trained with SAF-E.

Port of ``spikingjelly.activation_based.examples.conv_fashion_mnist`` (SpikingJelly 2.0.0): its
own ``CSNN`` class (Conv-BN-IFNode-MaxPool x2, Linear-IFNode x2, step mode 'm', the image
repeated T times inside ``forward``, the firing rate as output), BatchNorm in training mode,
max pooling, MSE of the firing rate against the one-hot label, and its recipe: SGD lr 0.1,
momentum 0.9, cosine schedule over the epochs, batch 128, T=4, 128 channels; TensorBoard.

Nothing changed: ``saf_plugin.set_saf`` runs the convolutions and Linears once per step on
accumulations, the training-mode BatchNorms and the max pooling per step on the real values, and
the hard-reset ``IFNode`` neurons (``v_reset=0.``, which have no closed form in accumulations)
per step as well (their own step on the de-accumulated input current), so the forward is the
plain model's, exactly. ``--soft-reset`` switches the IF neurons to soft reset (``v_reset=None``)
first: SAF's closed form, a different model. ``--saf off`` trains the same network with
SpikingJelly's BPTT.

``--saf F`` is refused: SAF-F's gradient (the Spike Representation's) is defined for linear
maps between neurons only, and this model has per-step operations (training-mode BatchNorm,
max pooling). The script does not catch saf_plugin's ``SAFIncompatibleError``; it names the
operation and stops before anything is trained.

On the offline digits the defaults are a quick setting: T = 4, 4 epochs, SGD lr 0.1 with the
recipe's momentum and cosine schedule, batch 32 (128 images would be 11 updates per epoch),
16 channels (128 is slow on a CPU); with a real data set, the original recipe. Measured
numbers: docs/examples.md.

    python examples/spikingjelly_conv_fashion_mnist.py                     # SAF-E, offline digits
    python examples/spikingjelly_conv_fashion_mnist.py --saf off           # BPTT
    python examples/spikingjelly_conv_fashion_mnist.py --data fashion-mnist --download
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

import _common as C
import saf_plugin

try:  # the class from SpikingJelly's own example
    from spikingjelly.activation_based.examples.conv_fashion_mnist import CSNN
except ImportError:  # pragma: no cover - the example imports tensorboard
    from torch import nn
    from spikingjelly.activation_based import layer, neuron, surrogate

    class CSNN(nn.Module):  # a verbatim copy of SpikingJelly 2.0.0's class
        def __init__(self, T: int, channels: int):
            super().__init__()
            self.T = T
            self.conv_fc = nn.Sequential(
                layer.Conv2d(1, channels, kernel_size=3, padding=1, bias=False),
                layer.BatchNorm2d(channels), neuron.IFNode(surrogate_function=surrogate.ATan()),
                layer.MaxPool2d(2, 2),
                layer.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
                layer.BatchNorm2d(channels), neuron.IFNode(surrogate_function=surrogate.ATan()),
                layer.MaxPool2d(2, 2), layer.Flatten(),
                layer.Linear(channels * 7 * 7, channels * 4 * 4, bias=False),
                neuron.IFNode(surrogate_function=surrogate.ATan()),
                layer.Linear(channels * 4 * 4, 10, bias=False),
                neuron.IFNode(surrogate_function=surrogate.ATan()))
            functional.set_step_mode(self, step_mode="m")

        def forward(self, x):
            return self.conv_fc(x.unsqueeze(0).expand(self.T, -1, -1, -1, -1)).mean(0)


# the original's settings (real data) and the quick setting on the offline digits
RECIPE = dict(T=4, batch_size=128, epochs=64, lr=0.1, channels=128)
DIGITS = dict(T=4, batch_size=32, epochs=4, lr=0.1, channels=16)


def main(argv=None) -> str:
    p = C.base_parser(__doc__.splitlines()[0], data=("fashion-mnist", "mnist"),
                      recipe=RECIPE, digits=DIGITS, tensorboard=True)
    C.preset(p, "--channels", "channels of both convolutions", type=int)
    p.add_argument("--opt", choices=("sgd", "adam"), default="sgd", help="optimizer")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--soft-reset", action="store_true",
                   help="switch the IF neurons to soft reset first (SAF's closed form)")
    args = C.parse(p, argv)
    C.seed_everything(args.seed)
    device = torch.device(args.device)

    net = CSNN(T=args.T, channels=args.channels)
    changed = []
    if args.soft_reset:
        C.soft_reset(net)
        changed = ["IFNode: hard reset -> soft reset"]
    print("== SpikingJelly's CSNN" + (" with soft reset" if changed else " as it is"))
    C.print_check(net, torch.zeros(2, 1, 28, 28))
    net.to(device)
    if args.saf != "off":  # the whole model, as it is; SAF-F refuses it at the first call
        saf_plugin.set_saf(net, args.saf)

    train, test, _ = C.load_data(args, size=(28, 28))
    train_loader, test_loader = C.loaders(args, train, test)
    if args.opt == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(args.epochs, 1))

    def forward(x, y):
        fr = net(x)  # the firing rate [B, 10], as in SpikingJelly's example
        return fr, F.mse_loss(fr, F.one_hot(y, 10).float())

    task = C.Task(forward, lambda fr: fr, lambda: functional.reset_net(net))
    return C.train_and_report(
        "conv_fashion_mnist", net, task, args, train_loader, test_loader, opt, device,
        scheduler=sched, tensorboard=True, changed=changed)


if __name__ == "__main__":
    main()
