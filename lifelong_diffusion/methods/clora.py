"""`clora`: C-LoRA (Smith et al., 2023), continual self-regularized LoRA.

Like `merge`, a fresh adapter per concept is folded into the running weights after the
step; while it trains, the penalty

    weight * sum_l || P_l ⊙ (s B_t A_t) ||_F^2,   P_l = sum_{tau<t} s B_tau A_tau  (folded so far)

keeps the new update off the weight entries earlier concepts already changed. The new
identifier token starts random (docs/methods.md#clora; Backbone.initial_embedding).

Choices where the paper is silent:
- P_l is the dense folded update, built once per step in `prepare` without grad and kept on
  the UNet's device (about 370 MB in float32 for SD-1.5's attention projections); the
  current update s B_t A_t is formed densely per optimizer step so the gradient is exact.
- the penalty's scale depends on how large the updates are (model, lr, steps), so `weight`
  needs tuning per base model (reports/methods_tuning.md: on the world 1e3 gives F 0.41 at
  LA 0.44, 1e4 F 0.08 at LA 0.29; params.yaml holds the tuning rule's choice).
- the known weakness, loss of plasticity as P covers more entries, is logged: each step's
  train_log.json holds its update norm and the history of all earlier ones (Folding).
"""
from __future__ import annotations

import torch

from ..folded import folded_deltas, layer_update
from ..lora import STUDENT
from .base import StepContext
from .folding import Folding


class Clora(Folding):
    name = "clora"
    token_init = "random"

    def __init__(self, weight: float = 1e3):
        self.weight = weight

    def prepare(self, student, prev, concept, latents) -> None:
        super().prepare(student, prev, concept, latents)
        # the same layers as the folded ones: Student refuses LoRA settings that changed
        past = folded_deltas(prev.state, student.unet.device)
        self.pairs = [(self.layers[path], delta) for path, delta in past.items()]

    def penalty(self) -> torch.Tensor | None:
        """sum_l ||P_l ⊙ (s B_t A_t)||_F^2 (unweighted); None at the first step (no P)."""
        if not self.pairs:
            return None
        return sum(((past * layer_update(layer, STUDENT)) ** 2).sum() for layer, past in self.pairs)

    def regularizer(self, ctx: StepContext) -> torch.Tensor | None:
        penalty = self.penalty()
        return None if penalty is None else self.weight * penalty
