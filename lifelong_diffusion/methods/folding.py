"""Base of the methods that fold each concept's fresh adapter into the running weights
(`merge`, `clora`).

The student starts every concept from a fresh adapter; after the step its update is folded
into the low-rank factors the snapshot's state keeps (folded.py) and the snapshot keeps no
adapter. Training (teacher S_{t-1}) and evaluation both load base + all folded updates, so
the next teacher is exactly what was evaluated.
"""
from __future__ import annotations

from ..folded import apply_folded, fold, folded_factors, lora_layers, update_norms
from ..lora import STUDENT
from .base import LoraExport, Method


class Folding(Method):
    fresh_adapter = True
    keeps_adapter = False
    #: coefficient of the step's update when it is folded in (merge's `weight`)
    fold_weight: float = 1.0

    def prepare(self, student, prev, concept, latents) -> None:
        """Finds the student's LoRA layers now, so a target folding cannot handle (a conv)
        fails before training rather than after it."""
        self.layers = lora_layers(student.unet, STUDENT)

    def state_after_step(self, unet, prev, concept):
        self.state = fold(prev.state, unet, STUDENT, self.fold_weight)
        return self.state

    def train_log(self) -> dict:
        """Norm of this step's folded update and of every step so far: a falling curve is
        lost plasticity (each train_log.json holds the whole history)."""
        norms = update_norms(self.state)
        return {"update_norm": norms[-1], "update_norms": norms}

    @classmethod
    def fold_into_base(cls, unet, snap) -> None:
        """S_t = base + every folded update (the snapshot keeps no adapter)."""
        apply_folded(unet, snap.state)

    @classmethod
    def lora_exports(cls, snap, unet) -> list[LoraExport]:
        """The folded factors as one LoRA of rank r_total."""
        factors = folded_factors(snap.state)
        return [factors_as_lora(factors, unet)] if factors else []


def factors_as_lora(factors: dict, unet, token: str | None = None) -> LoraExport:
    """Folded (B, A) factors per module path as one LoRA. B already carries the scaling, so
    alpha = rank (scale 1). peft's Linear LoRA is A (r, in), B (out, r), as folded; its Conv2d
    LoRA is A a conv with the base kernel (r, in, kh, kw) and B a 1x1 conv (out, r, 1, 1), so
    the flattened A is reshaped to the base kernel."""
    weights = {}
    for path, (b, a) in factors.items():
        shape = unet.get_submodule(path).weight.shape
        weights[f"{path}.lora_A.weight"] = a.reshape(len(a), *shape[1:])
        weights[f"{path}.lora_B.weight"] = b.reshape(*b.shape, *[1] * (len(shape) - 2))
    rank = len(a)  # every layer has folded the same steps at the same rank
    return LoraExport(weights, rank, float(rank), token)
