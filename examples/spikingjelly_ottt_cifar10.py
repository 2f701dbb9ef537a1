"""OTTT's CIFAR-10 VGG (SpikingJelly ``ottt_spiking_vggws``) trained with SAF-E, SAF-F or OTTT.

The paper's own setup (OTTT's ``train_ottt_cifar.py``, reused by SAF): weight-standardised VGG
cfg [64,128,A,256,256,A,512,512,A,512,512] with ``Scale(2.74)`` after each neuron, global
average pooling and a Linear readout; LIF τ = 2, θ = 1, soft reset, sigmoid surrogate α = 4;
T = 6; SGD lr 0.1, momentum 0.9, cosine schedule; per-step loss ((1 − 0.05) CE + 0.05 MSE) / T;
prediction Σ_t o[t] (SAF-F: the spike representation at the last step).

    --saf E        SAF-E, per-step backward, gradients accumulated (OTTT_A; --online: OTTT_O)
    --saf F        SAF-F, steps 0..T−2 without autograd, one loss at T−1
    --saf off      the same network trained with BPTT (step mode 'm')
    --ottt         SpikingJelly's OTTT (OTTTLIFNode + ottt_online_training) as the baseline
    --width 8      divide every channel count by 8 (CPU runs)

On the offline digits the defaults are a quick setting: T = 4, 3 epochs, batch 32, width 8,
and every weight-standardised convolution's gain starting at 1.5 instead of 1 (``--gain``: at
width 8 SpikingJelly's initialisation leaves the last LIF layers silent on the digits, and
nothing learns); with ``--data cifar10``, the paper's setup.

Multi-GPU (or multi-process CPU with gloo): ``--batch-size`` is the GLOBAL batch, split evenly
over the processes; every process draws the same shuffled order, so N processes train exactly
like one process on the same global batches. ``train_step`` takes the DistributedDataParallel
wrapper: SAF-E's steps 0..T−2 run under ``no_sync()``, so gradients are all-reduced once per
batch (``--online``: once per step), and memory stays flat in T:

    torchrun --standalone --nproc_per_node 2 examples/spikingjelly_ottt_cifar10.py --saf E
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from spikingjelly.activation_based.model import spiking_vggws_ottt as vgg

import _common as C
import saf_plugin
from saf_plugin.training import prediction, train_step


def build(args) -> torch.nn.Module:
    """``ottt_spiking_vggws`` (``--width 1``) or the same VGG with channels divided by width."""
    kw = dict(tau=2.0, surrogate_function=surrogate.Sigmoid(alpha=4.0))
    if args.ottt:
        cell = neuron.OTTTLIFNode
    else:  # the LIF SAF assumes: soft reset, undecayed input (OTTTLIFNode's dynamics)
        cell = neuron.LIFNode
        kw.update(decay_input=False, v_reset=None, detach_reset=True)
    if args.width == 1:
        net = vgg.ottt_spiking_vggws(spiking_neuron=cell, num_classes=10, **kw)
    else:
        cfg = [v if v == "A" else max(v // args.width, 1) for v in vgg.cfgs["S"]]
        net = vgg.OTTTSpikingVGG(cfg, weight_standardization=True, num_classes=10,
                                 spiking_neuron=cell, light_classifier=True, **kw)
        net.classifier[2] = layer.Linear(cfg[-1], 10)
        torch.nn.init.normal_(net.classifier[2].weight, 0, 0.01)
        torch.nn.init.zeros_(net.classifier[2].bias)
    gain = getattr(args, "gain", 1.0)
    if gain != 1.0:  # every WSConv2d's learnable gain starts at `gain` instead of 1
        for m in net.modules():
            if isinstance(m, layer.WSConv2d) and m.gain is not None:
                torch.nn.init.constant_(m.gain, gain)
    return net


def loss_t(out: torch.Tensor, y: torch.Tensor, T: int) -> torch.Tensor:
    """OTTT's per-step loss: ((1 − 0.05) CE + 0.05 MSE(o, one-hot)) / T."""
    onehot = F.one_hot(y, 10).to(out.dtype)
    return ((1 - 0.05) * F.cross_entropy(out, y) + 0.05 * F.mse_loss(out, onehot)) / T


class ShardedBatches(torch.utils.data.Sampler):
    """Global batches of ``global_batch`` indices from one seeded permutation per epoch; this
    process yields its contiguous slice. With world size 1 it is plain shuffled batching."""

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int):
        if global_batch % world:
            raise ValueError(f"--batch-size {global_batch} is not divisible by {world} processes")
        self.n, self.gb, self.rank, self.world, self.seed = n, global_batch, rank, world, seed
        self.epoch = 0

    def __len__(self):
        return self.n // self.gb

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per = self.gb // self.world
        for b in range(len(self)):
            start = b * self.gb + self.rank * per
            yield perm[start:start + per]


# the original's settings (real data) and the quick setting on the offline digits
RECIPE = dict(T=6, batch_size=128, epochs=300, lr=0.1, width=1, gain=1.0)
DIGITS = dict(T=4, batch_size=32, epochs=3, lr=0.1, width=8, gain=1.5)


def main(argv=None) -> str:
    p = C.base_parser(__doc__.splitlines()[0], data=("cifar10",),
                      recipe=RECIPE, digits=DIGITS, tensorboard=True)
    p.add_argument("--ottt", action="store_true", help="train with SpikingJelly's OTTT instead")
    p.add_argument("--online", action="store_true",
                   help="update the weights at every step (OTTT_O); default: once per batch")
    C.preset(p, "--width", "divide every channel count by this", type=int)
    C.preset(p, "--gain", "initial gain of every weight-standardised convolution (1 is "
             "SpikingJelly's; with 1.5 every layer of the narrow VGG fires on the digits "
             "from the start, with 1 its last layers stay silent)", type=float)
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=0.0, help="SGD weight decay")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float64: the arithmetic the equivalence tests use")
    args = C.parse(p, argv)
    if args.ottt:
        args.saf = "off"

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    if distributed:
        backend = "nccl" if args.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(args.device)
    C.seed_everything(args.seed)  # same seed everywhere: identical initial weights
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    model = build(args).to(device=device, dtype=dtype)
    if args.saf == "off" and not args.ottt:
        functional.set_step_mode(model, "m")  # BPTT over the whole sequence in one call
    if args.saf != "off":
        if rank == 0:
            C.print_check(model)
        saf_plugin.set_saf(model, args.saf)
    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    train, test, _ = C.load_data(args, size=(32, 32), channels=3)
    sampler = ShardedBatches(len(train), args.batch_size, rank, world, args.seed)
    train_loader = torch.utils.data.DataLoader(train, batch_sampler=sampler,
                                               num_workers=args.workers)
    test_loader = torch.utils.data.DataLoader(test, batch_size=args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                          weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(args.epochs, 1))
    T = args.T

    def step(x, y):
        """One batch, the way the chosen method trains; returns (loss, outputs [T, B, 10])."""
        x = x.to(dtype)
        x_seq = C.static_to_seq(x, T)
        opt.zero_grad(set_to_none=True)
        if args.ottt:
            from spikingjelly.activation_based.learning.online_learning import (
                ottt_online_training)

            loss, out = ottt_online_training(net, opt, x_seq.transpose(0, 1),
                                             y.unsqueeze(1).expand(-1, T),
                                             lambda o, t: loss_t(o, t, T), args.online)
            return loss, out.transpose(0, 1)
        if args.saf == "off":
            out = net(x_seq)
            loss = sum(loss_t(out[t], y, T) for t in range(T))
            loss.backward()
            opt.step()
            return loss.detach(), out.detach()
        # SAF-E: forward and backward at every step (--online: an update at every step);
        # SAF-F: steps 0..T−2 build no graph, one loss on the representation at T−1.
        # Under DDP train_step all-reduces once per batch (steps 0..T−2 under net.no_sync()).
        scale = 1 if args.saf == "E" else T  # SAF-F's single loss is not divided by T
        return train_step(net, x_seq, y, lambda o, t: scale * loss_t(o, t, T), opt,
                          online=args.online)

    def forward(x, y):  # evaluation
        x_seq = C.static_to_seq(x.to(dtype), T)
        if args.saf == "off" and not args.ottt:
            out = model(x_seq)
        else:
            out = torch.stack([model(x_seq[t]) for t in range(T)])
        return out, sum(loss_t(out[t], y, T) for t in range(T))

    task = C.Task(forward, lambda out: prediction(out, args.saf), lambda: functional.reset_net(model))
    tag = "ottt" + ("_online" if args.online else "") if args.ottt else f"saf{args.saf}"
    out_dir = os.path.join(args.out_dir, f"ottt_cifar10_{args.data}_{tag}_w{args.width}")
    log = C.RunLog(out_dir, tensorboard=True) if rank == 0 else None

    class _Epochs:  # advance the sampler's epoch so every process reshuffles alike
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            yield from self.loader
            sampler.epoch += 1

    acc, spe = C.train_epochs(model, task, args, _Epochs(train_loader), test_loader, opt,
                              scheduler=sched, log=log, rank=rank, step_fn=step)
    line = ""
    if rank == 0:
        log.close()
        C.save_checkpoint(model, os.path.join(out_dir, "checkpoint.pt"), args=vars(args))
        line = C.final_line(acc, spe, device, method=tag, data=args.data, world=world)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return line


if __name__ == "__main__":
    main()
