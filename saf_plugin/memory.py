"""Memory measures for training: the bytes autograd keeps for backward
(:class:`SavedTensorMeter`) and the process's peak resident set (:func:`peak_rss_bytes`).
Both are public in :mod:`saf_plugin.training` too."""

from __future__ import annotations

import resource
import sys
from typing import Iterable

import torch
from torch import Tensor, nn


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class _Packed:
    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: Tensor, key, meter: "SavedTensorMeter"):
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self):
        self.meter._release(self.key)


class SavedTensorMeter:
    """Bytes autograd keeps alive for backward, counted through ``saved_tensors_hooks``.

    Each storage is counted once while any saved tensor refers to it; ``peak`` is the most
    bytes alive at any moment inside the ``with`` block, ``total`` everything ever saved.
    Parameters and the storages of the tensors in ``exclude`` are alive anyway and are skipped.

    The input is not excluded unless you pass it: the meter cannot tell it from the tensors
    training creates. A step ``x_seq[t]`` that autograd saves is a view of the whole input,
    so without ``exclude=[x_seq]`` the meter counts the whole ``x_seq`` of shape
    ``[T, B, ...]`` (T steps' bytes) as soon as one step is saved. Pass it to count only what
    training adds::

        with SavedTensorMeter(exclude=[x_seq]) as meter:
            train_step(net, x_seq, y, loss_fn)
        meter.peak
    """

    def __init__(self, *, skip_parameters: bool = True, exclude: Iterable[Tensor] = ()):
        self.skip_parameters = skip_parameters
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self.live = 0
        self.peak = 0
        self.total = 0
        self._refs: dict = {}
        self._ctx = None

    def _pack(self, t: Tensor):
        if self.skip_parameters and isinstance(t, nn.Parameter):
            return t
        try:
            st = t.untyped_storage()
            key, nbytes = (st.data_ptr(), t.device), st.nbytes()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - exotic tensors
            return t
        if key[0] in self._excluded:
            return t
        count, size = self._refs.get(key, (0, nbytes))
        if count == 0:
            self.live += size
            self.total += size
            self.peak = max(self.peak, self.live)
        self._refs[key] = (count + 1, size)
        return _Packed(t, key, self)

    @staticmethod
    def _unpack(p):
        return p.tensor if isinstance(p, _Packed) else p

    def _release(self, key) -> None:
        count, size = self._refs[key]
        if count == 1:
            del self._refs[key]
            self.live -= size
        else:
            self._refs[key] = (count - 1, size)

    def __enter__(self) -> "SavedTensorMeter":
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)
