"""SpikingJelly's ``classify_dvsg`` (DVS128 Gesture, ``DVSGestureNet``) trained with SAF.

Port of ``spikingjelly.activation_based.examples.classify_dvsg`` (SpikingJelly 2.0.0): the same
network (5 x [Conv-BN-LIF-MaxPool], Dropout-Linear-LIF x2, ``VotingLayer(10)``), LIF with the
ATan surrogate and ``detach_reset=True``, step mode 'm', BatchNorm in training mode, MSE of the
firing rate against the one-hot label, cosine schedule, TensorBoard, and the recipe of its
documented command: Adam, lr 0.001, batch 16, T=16 (``--opt sgd --lr 0.1`` for SGD, momentum 0.9).

Nothing changed: under SAF-E the convolutions run once per step on accumulations; the
training-mode BatchNorms, the max pooling and what follows it (the dropouts, whose
``layer.Dropout`` draws one mask per sequence, the Linears and ``VotingLayer``, an average
pool) run per step on the real values, as do the hard-reset LIF neurons (``v_reset=0.``: no
closed form), so the forward is the plain model's (``saf_plugin.check(net, x)`` lists each
operation's route; the script prints them). ``--soft-reset`` switches them to soft reset first (SAF's closed
form, a different model). ``--saf off`` trains the same network with SpikingJelly's BPTT.
``--saf F`` is refused by saf_plugin (SAF-F needs the closed form and linear maps between
neurons; this model has per-step operations); the script lets the error show.

On the offline digits the defaults are a quick setting (T = 2, 3 epochs, Adam lr 1e-2, batch
16, 16 channels; above 80 % on the held-out digits with SAF-E and with BPTT, see
docs/examples.md); with ``--data dvs128``, the original recipe.

Data: offline, the digits as 128x128 event frames (``_common.digits_to_events``; 10 of the
net's 11 outputs are used). ``--data dvs128`` uses SpikingJelly's ``DVS128Gesture`` class,
which needs the data set downloaded by hand into ``--data-dir`` (IBM's licence; the class
prints where to put the files).

    python examples/spikingjelly_classify_dvsg.py                      # SAF-E, offline digits
    python examples/spikingjelly_classify_dvsg.py --data dvs128 --data-dir /datasets/DVSGesture
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, neuron, surrogate
from spikingjelly.activation_based.model import parametric_lif_net

import _common as C
import saf_plugin


# the original's settings (real data) and the quick setting on the offline digits
RECIPE = dict(T=16, batch_size=16, epochs=64, lr=1e-3, channels=128)
DIGITS = dict(T=2, batch_size=16, epochs=3, lr=1e-2, channels=16)


def main(argv=None) -> str:
    p = C.base_parser(__doc__.splitlines()[0], data=("dvs128",),
                      recipe=RECIPE, digits=DIGITS, tensorboard=True)
    C.preset(p, "--channels", "channels of every convolution", type=int)
    p.add_argument("--opt", choices=("sgd", "adam"), default="adam", help="optimizer")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--soft-reset", action="store_true",
                   help="switch the LIF neurons to soft reset first (SAF's closed form)")
    args = C.parse(p, argv)
    C.seed_everything(args.seed)
    device = torch.device(args.device)

    net = parametric_lif_net.DVSGestureNet(channels=args.channels, spiking_neuron=neuron.LIFNode,
                                           surrogate_function=surrogate.ATan(),
                                           detach_reset=True)
    functional.set_step_mode(net, "m")
    changed = []
    if args.soft_reset:
        C.soft_reset(net)
        changed = ["LIFNode: hard reset -> soft reset"]
    print("== SpikingJelly's DVSGestureNet" + (" with soft reset" if changed else " as it is"))
    C.print_check(net, torch.zeros(args.T, 1, 2, 128, 128))
    net.to(device)
    if args.saf != "off":  # the whole model, as it is; SAF-F refuses it at the first call
        saf_plugin.set_saf(net, args.saf)

    train, test, _ = C.load_data(args, size=(128, 128), events=True)
    train_loader, test_loader = C.loaders(args, train, test)
    if args.opt == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(args.epochs, 1))

    def forward(x, y):
        out = net(C.events_to_seq(x))  # [T, B, 11]
        return out, F.mse_loss(predict(out), F.one_hot(y, 11).float())

    def predict(out):  # the firing rate
        return out.mean(0)

    task = C.Task(forward, predict, lambda: functional.reset_net(net))
    return C.train_and_report(
        "classify_dvsg", net, task, args, train_loader, test_loader, opt, device,
        scheduler=sched, tensorboard=True, changed=changed)


if __name__ == "__main__":
    main()
