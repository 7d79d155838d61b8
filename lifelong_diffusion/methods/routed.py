"""`routed`: a bounded pool of LoRA units, routed by the prompt's token (beyond the seed papers).

Why a shared adapter forgets here: a layer that never sees the text (the world's finest-level
convs, most of SD's resnet convs) makes one change for every prompt, so the next concept's
change is the earlier concepts' change too. `routed` makes the use of every LoRA unit depend on
the prompt's token instead:

- a concept trains a fresh rank-r adapter (its own units) and, beside it, one gate per unit
  already in the pool: how much of each earlier unit it borrows (starting at 0);
- after its step its units join the pool frozen (kept as scaled factors, folded.py) and its
  gate vector g_t (1 on its own units) joins the snapshot;
- a prompt with concept j's token runs on W + B diag(g_j) A in every pooled layer; a prompt
  without a learned token runs on the base model.

Nothing a concept uses changes afterwards (units, gates, token), so earlier concepts are kept
exactly and class prompts never drift. The pool holds at most `max_units` units (one rank-32
LoRA by default), so the adapter's size is bounded whatever the sequence's length: once the
pool is full a new concept learns only its gates over the pool and its token (train_log.json:
`own_units` 0). Per concept the snapshot adds one gate vector (at most `max_units` numbers)
beside its token embedding.

Choices of ours: a gate is a plain linear coefficient (a unit may be borrowed with either
sign), one per unit for all layers, trained at train.lr without weight decay; a concept's own
units have gate 1, so the first concept trains exactly what `independent` trains.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F

from ..folded import base_layer, fold, folded_factors, lora_layers
from ..lora import STUDENT, adapter_parameters
from .base import LoraExport, Method
from .folding import factors_as_lora

GATE = "gate/"  # state key gate/<token>: the concept's gate on each unit of the pool then


def pool_size(state: dict[str, torch.Tensor]) -> int:
    """Units in the pool (every pooled layer holds the same number)."""
    factors = folded_factors(state)
    return len(next(iter(factors.values()))[1]) if factors else 0


def concept_gate(snap, token: str) -> torch.Tensor:
    """The token's gate on every unit of the snapshot's pool: units added after its step
    get 0."""
    gate = snap.state[f"{GATE}{token}"].float()
    return F.pad(gate, (0, pool_size(snap.state) - len(gate)))


def _add_units(base: torch.nn.Module, b: torch.Tensor, a: torch.Tensor, gate: torch.Tensor,
               module, args, output):
    """Forward hook: output + B diag(gate) A x, the way peft computes a LoRA (a conv's A is a
    conv with the base kernel, its B a 1x1 conv)."""
    x = args[0]
    g, b, a = gate.to(x.dtype), b.to(x.dtype), a.to(x.dtype)
    if isinstance(base, torch.nn.Conv2d):
        kernel = a.reshape(len(a), *base.weight.shape[1:])
        h = F.conv2d(x, kernel, None, base.stride, base.padding, base.dilation, base.groups)
        return output + F.conv2d(h * g[:, None, None], b[:, :, None, None])
    return output + F.linear(F.linear(x, a) * g, b)


class Router:
    """Adds the pool's units, weighted by `gate`, to every pooled layer of `unet`."""

    def __init__(self, unet, factors: dict, gate: torch.Tensor):
        self.handles = []
        for path, (b, a) in factors.items():
            module = unet.get_submodule(path)
            hook = partial(_add_units, base_layer(module, path), b.to(unet.device),
                           a.to(unet.device), gate)
            self.handles.append(module.register_forward_hook(hook))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class Routed(Method):
    name = "routed"
    fresh_adapter = True
    keeps_adapter = False

    def __init__(self, max_units: int = 32):
        if not isinstance(max_units, int) or max_units < 0:
            raise ValueError(f"params.yaml: train.method_params.routed.max_units is {max_units!r}; "
                             "it must be an integer >= 0")
        self.max_units = max_units

    def prepare(self, student, prev, concept, latents) -> None:
        unet = student.unet
        first = next(iter(lora_layers(unet, STUDENT).values()))  # also: Linear/Conv2d only
        self.rank, self.units = len(first.lora_A[STUDENT].weight), pool_size(prev.state)
        self.claims = self.units + self.rank <= self.max_units
        if not self.claims:  # pool full: the fresh adapter stays the identity
            for param in adapter_parameters(unet, STUDENT):
                param.requires_grad_(False)
        self.gate = torch.zeros(self.units, device=unet.device, requires_grad=True)
        self.router = Router(unet, folded_factors(prev.state), self.gate)

    def trainable_parameters(self) -> list[torch.Tensor]:
        return [self.gate] if self.units else []

    def state_after_step(self, unet, prev, concept):
        self.router.remove()
        gate = self.gate.detach().float().cpu()
        if self.claims:  # its own units join the pool, with gate 1
            state, gate = fold(prev.state, unet, STUDENT), torch.cat([gate, torch.ones(self.rank)])
        else:
            state = dict(prev.state)
        state[f"{GATE}{concept.token}"] = gate
        return state

    def train_log(self) -> dict:
        """Pool use: a falling `own_units` is a full pool; `borrowed` is the gate on each
        earlier unit (which earlier concepts this one builds on)."""
        return {"pool_units": self.units + (self.rank if self.claims else 0),
                "own_units": self.rank if self.claims else 0,
                "borrowed": self.gate.detach().cpu().tolist()}

    @classmethod
    @contextmanager
    def prompt_scope(cls, backbone, snap, token):
        """The token's concept's units for its prompt; the bare base model for a prompt
        without a learned token (a class prompt)."""
        router = None
        if token is not None:
            gate = concept_gate(snap, token).to(backbone.unet.device)
            router = Router(backbone.unet, folded_factors(snap.state), gate)
        try:
            yield
        finally:
            if router:
                router.remove()

    @classmethod
    def lora_exports(cls, snap, unet) -> list[LoraExport]:
        """One LoRA per concept, for its own token's prompts: the units it uses, its gate
        multiplied into B."""
        pool, exports = folded_factors(snap.state), []
        for concept in snap.concepts:
            gate = concept_gate(snap, concept["token"])
            used = gate.nonzero().flatten()
            if len(used):
                factors = {p: (b[:, used] * gate[used], a[used]) for p, (b, a) in pool.items()}
                exports.append(factors_as_lora(factors, unet, concept["token"]))
        return exports
