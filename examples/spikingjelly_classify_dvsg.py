"""SpikingJelly's ``classify_dvsg`` (DVS128 Gesture, ``DVSGestureNet``) trained with SAF.

Port of ``spikingjelly.activation_based.examples.classify_dvsg`` (SpikingJelly 2.0.0): the same
network (5 x [Conv-BN-LIF-MaxPool], Dropout-Linear-LIF x2, ``VotingLayer(10)``), LIF with the
ATan surrogate and ``detach_reset=True``, step mode 'm', MSE of the firing rate against the
one-hot label, cosine schedule, TensorBoard.

Under SAF the script first shows what ``saf_plugin.check`` says and fixes it: MaxPool ->
AvgPool and hard -> soft reset (``saf_plugin.fix``); ``VotingLayer`` (an average over groups
of neurons, so linear) is declared with ``saf_plugin.register_linear``. BatchNorm in training
mode is not exact under SAF (it normalises the growing accumulations with batch statistics), so
under SAF the BatchNorms run in eval mode, as learnable per-channel affine maps
(``_common.batchnorm_as_affine``), which SAF reproduces exactly; ``--saf off`` keeps them.

Data: offline, the digits as 128x128 event frames (``_common.digits_to_events``; 10 of the
net's 11 outputs are used). ``--data dvs128`` uses SpikingJelly's ``DVS128Gesture`` class,
which needs the data set downloaded by hand into ``--data-dir`` (IBM's licence; the class
prints where to put the files).

    python examples/spikingjelly_classify_dvsg.py --saf E --channels 16
    python examples/spikingjelly_classify_dvsg.py --data dvs128 --data-dir /datasets/DVSGesture
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from spikingjelly.activation_based.model import parametric_lif_net

import _common as C
import saf_plugin


def main(argv=None) -> str:
    p = C.base_parser(__doc__.splitlines()[0], data=("dvs128",), T=16, batch_size=16,
                      epochs=64, lr=0.1, tensorboard=True)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--opt", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--momentum", type=float, default=0.9)
    args = p.parse_args(argv)
    C.seed_everything(args.seed)
    device = torch.device(args.device)

    net = parametric_lif_net.DVSGestureNet(channels=args.channels, spiking_neuron=neuron.LIFNode,
                                           surrogate_function=surrogate.ATan(),
                                           detach_reset=True)
    functional.set_step_mode(net, "m")
    saf_plugin.register_linear(layer.VotingLayer)  # mean over groups of 10 outputs: linear
    print("== the original network")
    C.print_check(net)
    changes = C.fix_and_report(net)
    net.to(device)
    if args.saf != "off":  # SAF on the spiking body; its BatchNorms as exact affine maps
        C.saf_with_affine_batchnorm(net, net.conv_fc, args.saf)

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

    def predict(out):
        return out[-1] if args.saf == "F" else out.mean(0)

    task = C.Task(forward, predict, lambda: functional.reset_net(net))
    return C.train_and_report(
        "classify_dvsg", net, task, args, train_loader, test_loader, opt, device,
        scheduler=sched, tensorboard=True, saf_root=net.conv_fc,
        fixed=[f.reason for f in changes])


if __name__ == "__main__":
    main()
