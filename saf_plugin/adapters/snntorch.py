"""snnTorch 1.0 (``snntorch``) under SAF: ``snn.Leaky`` in closed form, the other neurons per
step, and what is refused.

The neuron snnTorch runs (``_neurons/leaky.py``, ``neurons.py``; β = ``beta.clamp(0, 1)``,
θ = ``threshold``, g = ``graded_spikes_factor``, r[t] = H(mem[t−1] − θ) detached)::

    reset_delay=True  (default):  mem[t] = β mem[t−1] + I[t] − θ r[t],   r[t] = s[t−1]
    reset_delay=False:            m[t]   = β mem[t−1] + I[t] − θ r[t]
                                  mem[t] = m[t] − θ (s[t] − r[t])
    reset "none":                 mem[t] = β mem[t−1] + I[t]
    spk[t] = g s[t],   s[t] = H(m[t] − θ)  (H(x) = [x > 0], surrogate in backward)

With â[t] = β â[t−1] + s[t] (unscaled spikes) and Y[t] = Σ_k β^k I[t−k] these unroll to

    reset_delay=True:   u[t] = Y[t] − θ â[t−1]                (core: reset_decay κ = 1)
    reset_delay=False:  u[t] = Y[t] − θ (β â[t−1] + r[t])     (κ = β; r[t] = H(mem[t−1] − θ)
                        mem[t] = Y[t] − θ â[t]                  is almost always 0)
    reset "none":       u[t] = Y[t]                           (κ = 0)

so the snnTorch reset without decay is the SAF step with κ = 1. The layer passes on the
accumulation of its graded spikes, ô[t] = β ô[t−1] + g s[t] (= â when g = 1).

Under SAF a converted ``Leaky`` returns what snnTorch returns: its real spikes g s[t] (tagged
with ô[t] for the layers after it) and the true membrane mem[t], so ``mem_rec`` lists and
membrane losses do not change. ``self.mem`` is kept equal to snnTorch's. The maths is
:func:`saf_plugin.neuron_step.step_with_membrane`.

A ``Leaky`` without a closed form (reset "zero", inhibition, state_quant, per-neuron β or θ,
θ ≤ 0) and ``Synaptic``, ``Lapicque``, ``RLeaky``, ``RSynaptic`` run per step
(:func:`saf_plugin.neuron_step.per_step`): snnTorch's own ``forward`` on the de-accumulated input
current, with the hidden states (``mem``, ``syn``, ``spk``) and the states passed in detached.

SAF state follows snnTorch's own state: a neuron is reset when its ``mem`` is no longer the
tensor SAF stored (``utils.reset`` / ``reset_hidden``, ``reset_mem``, ``init_leaky``, passing
a new ``mem``) or when its shape differs from the input's (a new batch size). Nothing here uses
``SpikingNeuron.instances``. A foreign nonzero ``mem`` (the closed form cannot start from a
charged membrane) and a neuron reset in the middle of a sequence raise :class:`SAFStateError`.

Gradients (history detached, as OTTT's instantaneous gradient): ∂mem[t]/∂β = mem[t−1] for a
learnable β, ∂mem[t]/∂θ = −r[t] for a learnable θ (plus −1 through the spike), d spk/dg = s[t].

Example (executed by ``tests/test_snntorch.py``)::

    import snntorch as snn
    import torch
    from snntorch import functional as SF, utils
    from torch import nn

    import saf_plugin

    T = 6
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), snn.Leaky(0.9, init_hidden=True),
                        nn.Linear(32, 10), snn.Leaky(0.9, init_hidden=True, output=True))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss_fn = SF.ce_rate_loss()
    saf_plugin.set_saf(net, "E")           # same modules, parameters and state_dict
    for x, y in [(torch.rand(T, 4, 8, 8), torch.randint(0, 10, (4,)))]:   # x: [T, B, ...]
        utils.reset(net)                   # resets the SAF state as well
        opt.zero_grad()
        spk_rec = []
        for t in range(T):                 # online: one backward per step, memory flat in T
            spk, mem = net(x[t])           # the real output spikes and membrane
            (loss_fn(spk[None], y) / T).backward()   # ce_rate_loss decomposes per step
            spk_rec.append(spk.detach())
        opt.step()                         # gradients summed over t: OTTT_A
        acc = SF.accuracy_rate(torch.stack(spk_rec), y)
    saf_plugin.set_saf(net, None)          # back to the plain snnTorch model

Losses of ``snntorch.functional`` on SAF-E outputs (spikes [T, B, C] stacked by the user):

- decompose per step (sum over t of a term of step t alone, so an online per-step backward
  gives the same gradient): ``ce_rate_loss`` (call it on ``spk[None]`` and divide by T),
  ``mse_membrane_loss`` on membranes (with ``time_var_targets`` pass the target of step t).
  ``accuracy_rate`` is a metric on the stacked spikes, unchanged.
- do not decompose (a function of the spike count Σ_t spk[t]): ``ce_count_loss``,
  ``mse_count_loss`` (a per-step call truncates its targets to one step's count),
  ``ce_max_membrane_loss`` (max over t), the temporal losses (first-spike times). They still work
  on the stacked SAF-E outputs with one backward at the end (the outputs are the same spikes),
  but then the graph of all T steps is kept; for online training use SAF-F with a count loss on
  the spike representation, or a per-step loss.
"""

from __future__ import annotations

import snntorch as snn
import torch
from torch import Tensor, nn

from .. import _classes, neuron_step
from ..core import host_float
from ..errors import SAFStateError
from ..neuron_step import NeuronParams, NeuronState
from ..registry import NeuronFunctions, Spec, lookup, register, register_library
from ..modes import Mode
from . import snntorch_refusals  # noqa: F401  (registers what is refused)

_SUBTRACT, _ZERO, _NONE = 0, 1, 2


def _beta(m: nn.Module) -> Tensor:
    return m.beta.clamp(0, 1)


def decay(m: nn.Module) -> float:
    """λ of a neuron: clamp(β, 0, 1) (``Leaky``, ``RLeaky``), clamp(α, 0, 1) (the synaptic
    current's decay: ``Synaptic``, ``RSynaptic``, ``Alpha``), 1 − Δt/(RC) (``Lapicque``), else
    1; the mean of a per-neuron value. For a per-step neuron it is the decay of the trace its
    input weights see."""
    if isinstance(m, (snn.Synaptic, snn.RSynaptic, snn.Alpha)):
        return host_float(m.alpha, _mean_decay)
    if isinstance(m, snn.Lapicque):
        return float(torch.as_tensor(1 - m.time_step / (m.R * m.C)).detach().double().mean())
    if hasattr(m, "beta") and torch.is_tensor(m.beta):
        return host_float(m.beta, _mean_decay)
    return 1.0


def _mean_decay(value: Tensor) -> Tensor:
    return value.clamp(0, 1).double().mean()


def _graded_is_one(m: nn.Module) -> bool:
    g = m.graded_spikes_factor
    return not g.requires_grad and g.numel() == 1 and host_float(g) == 1.0


def _forward(self, input_, mem=None):
    """A converted ``Leaky``: same signature and return values as ``Leaky.forward``."""
    if self.init_hidden and mem is not None:
        raise TypeError("`mem` should not be passed as an argument while `init_hidden=True`")
    rt = neuron_step.runtime_of(self)
    if not self.__dict__["_saf_closed"]:
        if mem is not None:
            self.mem = mem
        return _per_step_forward(self, input_, mem)
    key, last = _chain(self, rt, mem)
    if mem is not None:
        self.mem = mem
    if last is not None:
        self.mem = last.mem_ref  # the membrane this chain returned last step
    fresh = last is None
    if not self.mem.shape == input_.shape:
        fresh = True
        self.mem = torch.zeros_like(input_)
    elif fresh and bool(self.mem.detach().ne(0).any()):
        raise SAFStateError(
            f"{self._saf_path}: the membrane holds values SAF did not compute (a nonzero initial "
            "mem, or a state left from a run before set_saf); SAF starts from mem = 0: reset the "
            "model first (snntorch.utils.reset(net), or mem = lif.init_leaky() / lif.reset_mem())")
    if not fresh and rt.t == 0:
        raise SAFStateError(
            f"{self._saf_path}: this neuron was not reset while the model input restarted (step "
            "0); under SAF reset all neurons together before each sequence (utils.reset(net), or "
            "call init_leaky() / reset_mem() on every neuron, before the first layer runs)")
    p = params(self)
    if rt.mode == Mode.F and not p.resets:
        raise SAFStateError(
            f"{self._saf_path}: SAF-F needs a reset (the Spike Representation of a neuron "
            "without reset is not defined); use reset_mechanism='subtract' or SAF-E")
    if fresh:
        rt.states.pop(key, None)  # a new chain (a reset in the middle of a sequence)
    st: NeuronState = rt.slot(self, NeuronState, key)
    lam = p.decay
    with rt.pausing():
        y, decay_in = rt.neuron_input(input_, lam, st, self)
        c = rt.series_now(lam, like=y, since=st.since) if rt.mode == Mode.F else None
        out, spk, mem_new = neuron_step.step_with_membrane(y, decay_in, st, p, rt.mode, c,
                                                           None if fresh else self.mem)
    self.mem = mem_new.detach()  # SAF never differentiates through it (and deepcopy works)
    self._saf_mem_ref = st.mem_ref = self.mem
    st.mem_out = mem_new  # what the caller may pass back as `mem`
    rt.emit(spk, out, lam, st.since)
    rt.tag(mem_new, "step")
    if self.output or not self.init_hidden:
        return spk, mem_new
    return spk


def _chain(m: nn.Module, rt, mem):
    """(state key, its last state or None): which membrane chain a call continues. A neuron
    holding its own membrane (``init_hidden``, or no ``mem`` passed) has one; a stateless one
    (``init_hidden=False``) may serve several layers, each passing its own membrane: the chain
    is the one whose last membrane is the one passed in, else a new one."""
    if mem is None:
        last = rt.states.get(id(m))
        own = m._saf_mem_ref is not None and m.mem is m._saf_mem_ref
        return id(m), last if (own and last is not None) else None
    chains = rt.chains.setdefault(id(m), [])
    for key in chains:
        st = rt.states.get(key)
        if st is not None and (mem is st.mem_out or mem is st.mem_ref):
            return key, st
    key = (id(m), len(chains))
    chains.append(key)
    return key, None


_STATES = ("mem", "syn", "spk", "syn_exc", "syn_inh")  # snnTorch's hidden-state buffers


def detach_states(m: nn.Module) -> None:
    for name in _STATES:
        value = getattr(m, name, None)
        if torch.is_tensor(value) and value.requires_grad:
            setattr(m, name, value.detach())


def _per_step_forward(self, input_, *args, **kwargs):
    """The per-step route: snnTorch's own forward, once per step, on the de-accumulated input
    current, with the neuron's state (its buffers and the states passed in) detached."""
    rt = neuron_step.runtime_of(self)
    forward = type(self)._saf_base.forward

    def one_step(current):
        detach_states(self)
        a = [x.detach() if torch.is_tensor(x) else x for x in args]
        kw = {k: x.detach() if torch.is_tensor(x) else x for k, x in kwargs.items()}
        return forward(self, current, *a, **kw)

    out = neuron_step.per_step(rt, self, input_, self._saf_spec.neuron.decay(self), one_step)
    detach_states(self)  # the returned states keep their graph; the module holds none
    self._saf_mem_ref = self.mem
    return out


def _reset_mem(self):
    rt = self.__dict__.get("_saf_rt")
    if rt is not None:
        rt.neuron_reset(self)
    return type(self)._saf_base.reset_mem(self)


def params(m: nn.Module) -> NeuronParams:
    """A closed-form ``Leaky``'s parameters for :func:`saf_plugin.neuron_step.step_with_membrane`."""
    beta = _beta(m)
    lam = decay(m)
    kind = int(host_float(m.reset_mechanism_val))
    kappa = 0.0 if kind == _NONE else (1.0 if m.reset_delay else lam)
    return NeuronParams(lam, beta if beta.requires_grad else None, m.threshold, None,
                        m.spike_grad, reset_decay=kappa, resets=kind != _NONE,
                        reset_delay=bool(m.reset_delay),
                        graded=None if _graded_is_one(m) else m.graded_spikes_factor)


def saf_class(cls: type) -> type:
    return _classes.make("neuron", cls, {"forward": _forward, "reset_mem": _reset_mem,
                                         "_call_impl": neuron_step.call_with_real_input})


_ATTRS = ("_saf_mem_ref", "_saf_closed")


def attach(m: nn.Module) -> None:
    m._saf_mem_ref = None
    m.__dict__["_saf_closed"] = closed_form(m)


def detach(m: nn.Module) -> None:
    for name in _ATTRS:
        m.__dict__.pop(name, None)


def is_fresh(m: nn.Module) -> bool:
    ref = m.__dict__.get("_saf_mem_ref")
    return ref is None or m.mem is not ref


def _no_closed_form(m: nn.Module) -> str:
    """Why a ``Leaky`` has no closed form ("" if it has one)."""
    if int(m.reset_mechanism_val) == _ZERO:
        return "reset_mechanism='zero' (hard reset)"
    if m.inhibition:
        return "inhibition=True (an argmax over the layer at every step)"
    if m.state_quant:
        return "state_quant (a quantized membrane)"
    if m.beta.numel() != 1:
        return f"a per-neuron beta (shape {tuple(m.beta.shape)})"
    if m.threshold.numel() != 1:
        return f"a per-neuron threshold (shape {tuple(m.threshold.shape)})"
    if float(m.threshold.detach()) <= 0:
        return "threshold <= 0 (snnTorch resets at t = 0 already)"
    return ""


def closed_form(m: nn.Module) -> bool:
    return isinstance(m, snn.Leaky) and lookup(m) is LEAKY and not _no_closed_form(m)


def judge_leaky(m: nn.Module):
    why = _no_closed_form(m)
    if not why:
        return ("exact", "closed form: spikes and membrane from accumulations", "")
    return ("exact", f"per step: {why}; its input current is de-accumulated and snnTorch's own "
            "step runs with the state detached (SAF-E only)", "")


def judge_per_step(m: nn.Module):
    return ("exact", f"per step: snntorch.{type(m).__name__}'s own step on the de-accumulated "
            "input current, its state detached (SAF-E only)", "")


def fix_leaky(m: nn.Module) -> str:
    """reset_mechanism 'zero' -> 'subtract', on the same object (``state_function`` too)."""
    if not isinstance(m, snn.Leaky) or int(m.reset_mechanism_val) != _ZERO:
        return ""
    m.reset_mechanism = "subtract"
    m.state_function = m._base_sub
    return "reset_mechanism='zero' -> 'subtract' (reset by subtraction)"


ADAPTER = NeuronFunctions(saf_class=saf_class, attach=attach, detach=detach, decay=decay,
                          is_fresh=is_fresh, fix=fix_leaky, reset_on_shape_change=True,
                          closed_form=closed_form)
LEAKY = Spec("neuron", judge=judge_leaky, neuron=ADAPTER, dynamics=(
    "forward", "fire", "mem_reset", "_base_state_function", "_base_sub", "_base_int"))
register(snn.Leaky, LEAKY)


def per_step_class(cls: type) -> type:
    return _classes.make("neuron", cls, {"forward": _per_step_forward, "reset_mem": _reset_mem,
                                         "_call_impl": neuron_step.call_with_real_input})


PER_STEP = NeuronFunctions(saf_class=per_step_class, attach=attach, detach=detach, decay=decay,
                           is_fresh=is_fresh, reset_on_shape_change=True,
                           closed_form=lambda m: False)


for _name in ("Synaptic", "Lapicque", "RLeaky", "RSynaptic"):
    register(getattr(snn, _name), Spec("neuron", judge=judge_per_step, neuron=PER_STEP))


# --------------------------------------------------------------------------- the library


class SnnTorchLibrary:
    """snnTorch's :class:`~saf_plugin.contracts.LibraryAdapter`: ``SpikingNeuron`` subclasses
    (state in buffers and attributes: ``mem``, ``syn``, ``spk``; reset by ``reset_mem``), one
    step per call."""

    name = "snntorch"
    reset_advice = "utils.reset(net)"

    def owns(self, module: nn.Module) -> bool:
        return isinstance(module, snn.SpikingNeuron)

    def step_mode(self, module: nn.Module):
        return None

    def step_mode_advice(self, mode: str):
        return None

    def reset(self, net: nn.Module) -> None:
        """``reset_mem()`` of every neuron found by walking ``net.modules()`` (never the global
        ``SpikingNeuron.instances`` registry, which misses deep copies and resets unrelated
        nets)."""
        for m in net.modules():
            if isinstance(m, snn.SpikingNeuron):
                reset = getattr(m, "reset_mem", None)
                if reset is not None:
                    reset()

    detach_state = staticmethod(detach_states)

    def state_stores(self, module: nn.Module):
        return ()

    def keeps_state_in_buffers(self, module: nn.Module) -> bool:
        return isinstance(module, snn.SpikingNeuron)

    def classes_changed(self, net: nn.Module) -> None:
        pass

    def neuron_adapter(self, cls: type, decay, lif):
        if lif is not None or not issubclass(cls, snn.SpikingNeuron):
            return None
        adapter = NeuronFunctions(
            saf_class=per_step_class, attach=attach, detach=detach, decay=decay,
            is_fresh=is_fresh, reset_on_shape_change=True, closed_form=lambda m: False)
        return adapter, judge_per_step


LIBRARY = SnnTorchLibrary()
register_library(LIBRARY)
