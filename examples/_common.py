"""Shared plumbing of the saf-plugin examples: arguments, data, logging, checkpoints.

Every example runs offline by default on scikit-learn's handwritten digits (1,797 8x8 images
that ship inside scikit-learn), resized to the input shape of the model it ports. Event-based
examples turn the digits into event frames with :func:`digits_to_events`. ``--data`` selects
the real data set through its usual loader (torchvision, tonic, SpikingJelly), which downloads
on its own terms (``--download``) into ``--data-dir``; nothing here downloads anything.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is an install requirement
    def tqdm(it, **kwargs):
        return it

import saf_plugin


# --------------------------------------------------------------------------- arguments


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in --help (an option whose default depends on --data says
    both in its own text)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def base_parser(description: str, *, data: tuple[str, ...], recipe: dict, digits: dict,
                tensorboard: bool = False) -> argparse.ArgumentParser:
    """The options every example shares. ``recipe``: the original example's settings (T,
    batch_size, epochs, lr and any option the example adds with :func:`preset`), used with a
    real data set; ``digits``: the quick setting used on the offline digits, the default
    data. :func:`parse` fills what the command line left open. ``tensorboard``: the example
    also writes TensorBoard scalars into ``--out-dir`` (as the original it ports does)."""
    p = argparse.ArgumentParser(description=description, formatter_class=_Help)
    p.recipe, p.digits = recipe, digits
    p.add_argument("--saf", choices=("off", "E", "F"), default="E",
                   help="off: the library's own training (BPTT); E: SAF-E; F: SAF-F")
    p.add_argument("--data", choices=("digits",) + data, default="digits",
                   help="digits: scikit-learn's digits, offline; others: the real data set")
    p.add_argument("--data-dir", default="./data", help="where the real data set lives")
    p.add_argument("--download", action="store_true",
                   help="let the data set's own loader download it (torchvision/tonic)")
    preset(p, "--epochs", "training epochs", type=int)
    preset(p, "--T", "time steps", type=int)
    preset(p, "--batch-size", "images per batch", type=int)
    preset(p, "--lr", "learning rate", type=float)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda")
    p.add_argument("--out-dir", default="./runs",
                   help="where the run writes its CSV log" + (", TensorBoard scalars" if tensorboard
                                                             else "") + " and checkpoint")
    p.add_argument("--max-batches", type=int, default=0,
                   help="stop each epoch after this many batches (0: whole epoch)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the shuffling")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    return p


def preset(p: argparse.ArgumentParser, flag: str, text: str, **kwargs) -> None:
    """An option whose default is the original recipe's on a real data set and the quick
    setting's on the offline digits."""
    key = flag.lstrip("-").replace("-", "_")
    recipe, digits = p.recipe[key], p.digits[key]
    both = (f"default: {recipe}" if recipe == digits
            else f"default: {recipe} (the original recipe); on the offline digits {digits}")
    p.add_argument(flag, default=None, help=f"{text} ({both})", **kwargs)


def fix_option(p: argparse.ArgumentParser) -> None:
    """``--fix``: max pooling replaced by average pooling first (``saf_plugin.fix``), for
    every ``--saf``: a different network."""
    p.add_argument("--fix", action="store_true",
                   help="replace max pooling by average pooling first (saf_plugin.fix): a "
                   "different network, which runs its pooling once per step on accumulations")


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, then fill each open preset option from the quick setting (offline digits) or
    the original recipe (a real data set)."""
    args = p.parse_args(argv)
    for key, value in (p.digits if args.data == "digits" else p.recipe).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- offline data


def digits_images(size: tuple[int, int], channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as float images [N, channels, H, W] in [0, 1], labels [N]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8]
    return _resize(x, size).expand(-1, channels, -1, -1).contiguous(), torch.tensor(d.target)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp_(0, 1)


def digits_to_events(img: torch.Tensor, T: int, *, shift: int = 0, threshold: float = 0.1
                     ) -> torch.Tensor:
    """A digit image [N, 1, H, W] in [0, 1] as DVS-like event frames [N, T, 2, H, W].

    N-MNIST was recorded by moving an event camera in three saccades in front of MNIST digits.
    This imitates it: frame t sees the image translated by (dy, dx) along a triangle of
    side ``shift`` pixels (default H // 16 + 1), and reports what a DVS pixel would, the change
    of brightness since the previous frame: channel 0 (ON) = relu(I_t − I_{t−1}),
    channel 1 (OFF) = relu(I_{t−1} − I_t), both zeroed below ``threshold`` (the camera's
    contrast threshold). I_{−1} is a black frame, so frame 0 holds the whole digit as ON
    events. The values are event counts per pixel and bin in the sense of
    ``tonic.transforms.ToFrame`` (here fractional).
    """
    N, _, H, W = img.shape
    shift = shift or H // 16 + 1
    path = [(0, 0), (shift, shift), (0, 2 * shift)]  # saccade corners (dy, dx)
    prev = torch.zeros_like(img)
    frames = []
    for t in range(T):
        a, b = path[t % 3], path[(t + 1) % 3]
        frac = (t % 3) / 3.0
        dy = round(a[0] + (b[0] - a[0]) * frac)
        dx = round(a[1] + (b[1] - a[1]) * frac) - shift
        cur = torch.roll(img, shifts=(dy, dx), dims=(2, 3))
        on = (cur - prev).clamp(min=0)
        off = (prev - cur).clamp(min=0)
        frame = torch.cat([on, off], 1)
        frames.append(torch.where(frame >= threshold, frame, torch.zeros_like(frame)))
        prev = cur
    return torch.stack(frames, 1)


class DigitsDataset(Dataset):
    """scikit-learn's digits, resized to ``size`` when an item is read (so 128x128 event data
    costs no memory up front): images [C, H, W] in [0, 1] (optionally normalised), or with
    ``events_T`` event frames [T, 2, H, W] from :func:`digits_to_events`."""

    def __init__(self, images8: torch.Tensor, labels: torch.Tensor, size: tuple[int, int],
                 channels: int = 1, events_T: int = 0, normalize: Optional[tuple] = None):
        self.images8, self.labels = images8, labels
        self.size, self.channels, self.events_T = size, channels, events_T
        self.norm = None if normalize is None else tuple(
            torch.tensor(v).view(-1, 1, 1) for v in normalize)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = _resize(self.images8[i:i + 1], self.size)  # [1, 1, H, W]
        if self.events_T:
            return digits_to_events(x, self.events_T)[0], self.labels[i]
        x = x[0].expand(self.channels, -1, -1)
        if self.norm is not None:
            x = (x - self.norm[0]) / self.norm[1]
        return x, self.labels[i]


def offline_digits(size: tuple[int, int], channels: int = 1, *, events_T: int = 0,
                   test_fraction: float = 0.2, normalize: Optional[tuple] = None
                   ) -> tuple[Dataset, Dataset, int]:
    """Train/test split (fixed seed, 80/20) of the digits, as images [C, H, W] or events
    [T, 2, H, W]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8]
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    n_test = int(len(y) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    make = lambda idx: DigitsDataset(x[idx], y[idx], size, channels, events_T,  # noqa: E731
                                     normalize)
    return make(train), make(test), 10


# --------------------------------------------------------------------------- real data


def load_data(args, *, size: tuple[int, int], channels: int = 1, events: bool = False
              ) -> tuple[Dataset, Dataset, int]:
    """(train, test, classes) for ``args.data``.

    Images come as [C, H, W], event data as [T, 2, H, W] (T = ``args.T``).
    """
    name = args.data
    if name == "digits":
        norm = CIFAR_NORM if channels == 3 else None
        return offline_digits(size, channels, events_T=args.T if events else 0, normalize=norm)
    if name in ("fashion-mnist", "mnist", "cifar10"):
        import torchvision
        from torchvision import transforms as tr

        if name == "cifar10":
            cls = torchvision.datasets.CIFAR10
            norm = tr.Normalize(*CIFAR_NORM)
            train_tf = tr.Compose([tr.RandomCrop(32, padding=4), tr.RandomHorizontalFlip(),
                                   tr.ToTensor(), norm])
            test_tf = tr.Compose([tr.ToTensor(), norm])
        else:
            cls = (torchvision.datasets.FashionMNIST if name == "fashion-mnist"
                   else torchvision.datasets.MNIST)
            train_tf = test_tf = tr.ToTensor()
        return (cls(args.data_dir, train=True, transform=train_tf, download=args.download),
                cls(args.data_dir, train=False, transform=test_tf, download=args.download), 10)
    if name == "nmnist":
        import tonic

        sensor = tonic.datasets.NMNIST.sensor_size
        tf = tonic.transforms.Compose([tonic.transforms.Denoise(filter_time=10000),
                                       tonic.transforms.ToFrame(sensor_size=sensor,
                                                                n_time_bins=args.T)])
        # tonic downloads by itself when the files are missing
        make = lambda train: tonic.datasets.NMNIST(save_to=args.data_dir, train=train,  # noqa: E731
                                                   transform=tf)
        return _FloatFrames(make(True)), _FloatFrames(make(False)), 10
    if name == "dvs128":
        # DVS128 Gesture must be downloaded by hand (IBM's licence); SpikingJelly's class says
        # where to put the files and converts them to frames on first use.
        from spikingjelly.datasets.dvs128_gesture import DVS128Gesture

        make = lambda train: DVS128Gesture(args.data_dir, train=train, data_type="frame",  # noqa: E731
                                           frames_number=args.T, split_by="number")
        return _FloatFrames(make(True)), _FloatFrames(make(False)), 11
    raise ValueError(f"unknown data set {name!r}")


CIFAR_NORM = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


class _FloatFrames(Dataset):
    """Event frames (numpy int arrays [T, 2, H, W]) as float tensors."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return torch.as_tensor(np.asarray(x), dtype=torch.float32), int(y)


def loaders(args, train: Dataset, test: Dataset, *, sampler=None, batch_size=None):
    bs = batch_size or args.batch_size
    g = torch.Generator().manual_seed(args.seed)
    return (DataLoader(train, batch_size=bs, shuffle=sampler is None, sampler=sampler,
                       num_workers=args.workers, drop_last=True, generator=g),
            DataLoader(test, batch_size=bs, shuffle=False, num_workers=args.workers))


# --------------------------------------------------------------------------- logging


class RunLog:
    """One CSV row per epoch (``<out>/log.csv``) and, where the original example had it,
    TensorBoard scalars (skipped with a note if tensorboard is not installed)."""

    def __init__(self, out_dir: str, *, tensorboard: bool = False):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, "log.csv")
        self._file = open(self.path, "w", newline="")
        self._csv: Optional[csv.DictWriter] = None
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(out_dir)
            except ImportError:
                print("tensorboard is not installed: logging to CSV only", file=sys.stderr)

    def row(self, epoch: int, **values) -> None:
        if self._csv is None:
            self._csv = csv.DictWriter(self._file, fieldnames=["epoch", *values])
            self._csv.writeheader()
        self._csv.writerow({"epoch": epoch, **values})
        self._file.flush()
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, epoch)

    def close(self) -> None:
        self._file.close()
        if self.writer is not None:
            self.writer.close()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak GPU memory allocated by torch, or on CPU the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss"


def final_line(acc: float, sec_per_epoch: float, device: torch.device, **extra) -> str:
    """The last line every example prints (the tests parse it)."""
    mem, kind = peak_memory_mb(device)
    tail = "".join(f" {k}={v}" for k, v in extra.items())
    line = (f"FINAL test_acc={acc:.4f} sec_per_epoch={sec_per_epoch:.2f} "
            f"peak_mem_mb={mem:.0f} ({kind}){tail}")
    print(line, flush=True)
    return line


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(net: torch.nn.Module, path: str, *, saf_root=None, **meta) -> None:
    """Save the ordinary spiking model: SAF is switched off for the save and back on after,
    so the file loads into the plain library model with ``load_state_dict``.

    ``saf_root``: the module ``set_saf`` was called on, if not ``net`` itself.
    """
    root = net if saf_root is None else saf_root
    mode = saf_plugin.saf_mode(root)
    saf_plugin.set_saf(root, None)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save({"model": net.state_dict(), **meta}, path)
    if mode is not None:
        saf_plugin.set_saf(root, mode)


def train_and_report(name: str, net: torch.nn.Module, task: "Task", args, train_loader,
                     test_loader, optimizer, device: torch.device, *, scheduler=None,
                     tensorboard: bool = False, saf_root=None, **meta) -> str:
    """Train for ``args.epochs``, log (CSV, TensorBoard where the original had it), save the
    plain-model checkpoint and print the final line; returns that line."""
    out_dir = os.path.join(args.out_dir, f"{name}_{args.data}_saf{args.saf}")
    log = RunLog(out_dir, tensorboard=tensorboard)
    acc, spe = train_epochs(net, task, args, train_loader, test_loader, optimizer,
                            scheduler=scheduler, log=log)
    log.close()
    save_checkpoint(net, os.path.join(out_dir, "checkpoint.pt"), saf_root=saf_root,
                    args=vars(args), **meta)
    return final_line(acc, spe, device, saf=args.saf, data=args.data)


def print_check(net: torch.nn.Module, example_input=None) -> list:
    """Print what ``saf_plugin.check`` says, one line per module that is not exact; with
    ``example_input`` (what ``net`` is called with) also which operations run once per step on
    accumulations (SAF's saving) and which run per step on the real values."""
    findings = saf_plugin.check(net, example_input)
    bad = [f for f in findings if f.status != "exact"]
    print(f"saf_plugin.check: {len(findings)} findings, {len(bad)} not exact")
    for f in bad:
        print(f"  {f.path or '<model>'} ({f.module}): {f.status}: {f.reason}\n      fix: {f.fix}")
    if example_input is not None and not bad:
        on_acc = sorted({f.module for f in findings if "on accumulations" in f.reason})
        per_step = sorted({f.module for f in findings if "on the real values" in f.reason})
        print(f"  once per step on accumulations: {', '.join(on_acc) or '-'}")
        print(f"  per step on the real values: {', '.join(per_step) or '-'}")
    return findings


def soft_reset(net: torch.nn.Module) -> list[str]:
    """Switch every hard-reset SpikingJelly neuron of ``net`` to soft reset (``v_reset=None``):
    SAF's closed form instead of the per-step route (a different model); unlike
    ``saf_plugin.fix`` it leaves everything else (max pooling included) as it is. Returns the
    paths changed and prints them."""
    from spikingjelly.activation_based.neuron import BaseNode

    changed = [p for p, m in net.named_modules()
               if isinstance(m, BaseNode) and getattr(m, "v_reset", None) is not None]
    for p in changed:
        net.get_submodule(p).v_reset = None
    print(f"soft reset (v_reset=None) on {len(changed)} neurons: {', '.join(changed)}")
    return changed


# --------------------------------------------------------------------------- the loop


@dataclass
class Task:
    """What differs between examples: how one batch becomes outputs and a loss.

    ``forward(x, y) -> (outputs [T, B, classes], loss)``: loss as the mode prescribes.
    ``predict(outputs) -> logits [B, classes]``. ``reset()`` clears the neuron state.
    """

    forward: Callable
    predict: Callable
    reset: Callable


def train_epochs(net, task: Task, args, train_loader, test_loader, optimizer, *,
                 scheduler=None, log: Optional[RunLog] = None, rank: int = 0,
                 step_fn: Optional[Callable] = None) -> tuple[float, float]:
    """Train ``args.epochs`` epochs; returns (last test accuracy, seconds per train epoch).

    ``step_fn(x, y) -> (loss, outputs)`` replaces the default step (forward, backward, step)
    when an example trains online.
    """
    device = torch.device(args.device)
    reset_peak_memory(device)
    seconds = []
    acc = 0.0
    for epoch in range(args.epochs):
        net.train()
        t0 = time.perf_counter()
        seen = correct = 0
        loss_sum = 0.0
        bar = tqdm(train_loader, desc=f"epoch {epoch} [{args.saf}]", disable=rank != 0,
                   total=min(len(train_loader), args.max_batches or len(train_loader)))
        for i, (x, y) in enumerate(bar):
            if args.max_batches and i >= args.max_batches:
                break
            x, y = x.to(device), y.to(device)
            if step_fn is not None:
                loss, out = step_fn(x, y)
            else:
                optimizer.zero_grad(set_to_none=True)
                out, loss = task.forward(x, y)
                loss.backward()
                optimizer.step()
            task.reset()
            with torch.no_grad():
                correct += (task.predict(out).argmax(1) == y).sum().item()
            seen += y.numel()
            loss_sum += float(loss.detach()) * y.numel()
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
        if scheduler is not None:
            scheduler.step()
        acc, test_loss = evaluate(net, task, test_loader, args)
        if log is not None and rank == 0:
            log.row(epoch, train_loss=loss_sum / max(seen, 1), train_acc=correct / max(seen, 1),
                    test_loss=test_loss, test_acc=acc, seconds=seconds[-1])
    return acc, sum(seconds) / max(len(seconds), 1)


@torch.no_grad()
def evaluate(net, task: Task, loader, args) -> tuple[float, float]:
    net.eval()
    device = torch.device(args.device)
    seen = correct = 0
    loss_sum = 0.0
    for i, (x, y) in enumerate(loader):
        if args.max_batches and i >= args.max_batches:
            break
        x, y = x.to(device), y.to(device)
        out, loss = task.forward(x, y)
        task.reset()
        correct += (task.predict(out).argmax(1) == y).sum().item()
        loss_sum += float(loss) * y.numel()
        seen += y.numel()
    return correct / max(seen, 1), loss_sum / max(seen, 1)


def static_to_seq(x: torch.Tensor, T: int) -> torch.Tensor:
    """Direct encoding: the image [B, ...] repeated at every step, [T, B, ...]."""
    return x.unsqueeze(0).expand(T, *x.shape)


def events_to_seq(x: torch.Tensor) -> torch.Tensor:
    """Event frames [B, T, ...] (loader layout) to [T, B, ...]."""
    return x.transpose(0, 1)


def snntorch_unroll(net, x_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run an snnTorch ``init_hidden`` network step by step: (spikes, membranes) [T, B, ...]
    of its output layer (``Leaky(output=True)`` returns both)."""
    spk, mem = [], []
    for t in range(x_seq.shape[0]):
        s, m = net(x_seq[t])
        spk.append(s)
        mem.append(m)
    return torch.stack(spk), torch.stack(mem)


def fix_and_report(net) -> list:
    """``saf_plugin.fix`` with one printed line per change."""
    changes = saf_plugin.fix(net)
    print(f"saf_plugin.fix changed {len(changes)} modules:")
    for f in changes:
        print(f"  {f.path} ({f.module}): {f.reason}")
    return changes
