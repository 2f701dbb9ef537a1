"""The benchmarked methods: names and one-line descriptions. Imports nothing heavy, so the
``saf`` command line can build its help from it."""

from __future__ import annotations

METHODS = ("bptt", "ottt", "sltt", "saf_e_online", "saf_e_multi", "saf_f", "relu",
           "plain_step", "relu_online")
SNNTORCH_METHODS = ("bptt", "saf_e_online", "saf_f", "plain_step")
# floors for the host-bound regime (benchmarks/host_bound.py): run when named, not by default
ON_REQUEST = ("plain_step", "relu_online")
METHOD_HELP = {
    "bptt": "backpropagation through time, the library's own training (one backward)",
    "ottt": "SpikingJelly's OTTT: OTTTLIFNode + OTTTSequential, update every step",
    "sltt": "SpikingJelly's SLTT: SLTTLIFNode, backward every step, one update",
    "saf_e_online": "SAF-E online: set_saf(net, 'E'), backward and update every step",
    "saf_e_multi": "SAF-E multi-step: set_saf(net, 'E'), step mode 'm', one backward",
    "saf_f": "SAF-F: set_saf(net, 'F'), steps 0..T-2 without autograd, one backward",
    "relu": "the same network with ReLU instead of neurons (a lower bound on time)",
    "plain_step": "the plain model per step, state detached, update every step (on request)",
    "relu_online": "relu with a backward and an update every step (on request)",
}


def methods_help() -> str:
    """One line per method, for ``--help``."""
    return "methods:\n" + "\n".join(f"  {m:<13} {METHOD_HELP[m]}" for m in METHODS) + (
        "\n  (snnTorch models: " + ", ".join(SNNTORCH_METHODS) + ")")
