"""snnTorch tutorial 5 (a fully connected SNN on MNIST) trained with SAF.

Port of snnTorch's "Tutorial 5: Training Spiking Neural Networks with snntorch": the same
784-1000-10 network of ``snn.Leaky(beta=0.95)`` neurons with an explicit membrane loop in
``forward``, the same static input at every step, per-step cross-entropy on the output
membrane, Adam (lr 5e-4, betas (0.9, 0.999)), T = 25. This network is exact under SAF as is
(Linear maps, subtract reset): ``set_saf(net, "E")`` is the only change. Under SAF-F the loss
is cross-entropy on the spike representation at the last step. On the offline digits the
defaults are a quick setting (T = 10, 2 epochs, Adam lr 2e-3, batch 64); on MNIST, the
tutorial's.

    python examples/snntorch_tutorial5.py                    # SAF-E, offline digits at 28x28
    python examples/snntorch_tutorial5.py --data mnist --download
"""

from __future__ import annotations


import snntorch as snn
import torch
from snntorch import utils
import torch.nn.functional as F
from torch import nn

import _common as C
import saf_plugin
from saf_plugin.training import prediction


class Net(nn.Module):
    """Tutorial 5's network, verbatim: the loop over time steps lives in ``forward``."""

    def __init__(self, num_inputs=784, num_hidden=1000, num_outputs=10, num_steps=25, beta=0.95):
        super().__init__()
        self.num_steps = num_steps
        self.fc1 = nn.Linear(num_inputs, num_hidden)
        self.lif1 = snn.Leaky(beta=beta)
        self.fc2 = nn.Linear(num_hidden, num_outputs)
        self.lif2 = snn.Leaky(beta=beta)

    def forward(self, x):
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        spk2_rec, mem2_rec = [], []
        for _ in range(self.num_steps):
            cur1 = self.fc1(x)
            spk1, mem1 = self.lif1(cur1, mem1)
            cur2 = self.fc2(spk1)
            spk2, mem2 = self.lif2(cur2, mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)


# the original's settings (real data) and the quick setting on the offline digits
RECIPE = dict(T=25, batch_size=128, epochs=1, lr=5e-4, hidden=1000)
DIGITS = dict(T=10, batch_size=64, epochs=2, lr=2e-3, hidden=1000)


def main(argv=None) -> str:
    p = C.base_parser(__doc__.splitlines()[0], data=("mnist", "fashion-mnist"),
                      recipe=RECIPE, digits=DIGITS)
    C.preset(p, "--hidden", "hidden neurons", type=int)
    args = C.parse(p, argv)
    C.seed_everything(args.seed)
    device = torch.device(args.device)
    net = Net(num_hidden=args.hidden, num_steps=args.T).to(device)
    if args.saf != "off":
        C.print_check(net)
        saf_plugin.set_saf(net, args.saf)

    train, test, _ = C.load_data(args, size=(28, 28))
    train_loader, test_loader = C.loaders(args, train, test)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.999))

    def forward(x, y):
        spk, mem = net(x.flatten(1))
        if args.saf == "F":  # spk[-1] is the spike representation at the last step
            return spk, F.cross_entropy(spk[-1], y)
        return spk, sum(F.cross_entropy(mem[t], y) for t in range(args.T))

    task = C.Task(forward, lambda out: prediction(out, args.saf), lambda: utils.reset(net))
    return C.train_and_report(
        "snntorch_tutorial5", net, task, args, train_loader, test_loader, opt, device)


if __name__ == "__main__":
    main()
