"""`dsc`: function-space consolidation against the teacher snapshot S_{t-1}, replay-free.

Each optimizer step re-noises a few of the *current* concept's latents with one shared
(s, eps) and runs student and teacher on them under a few prompts of the past concepts, in
one batched UNet call each. The regularizer is
    weight * KL(P_teacher || P_student) + beta * MSE(eps_student, eps_teacher),
P the DC-score distribution over those prompts (dc_score.py). The KL keeps how the model
tells past concepts apart; the MSE keeps what it predicts under their prompts.

Choices where the papers are silent (docs/methods.md#dsc):
- prompts: the relevant set of lfs_kd (class prompts of every concept so far, the new one's
  included, then the past identifier prompts), so relevant-concept drift is held back as
  well; the MSE covers all of them ("past concepts' prompts" of the method's definition), not only the
  identifier prompts;
- inputs: the concept's clean latents re-noised here, not the training batch: StepContext
  does not carry the batch's noise, which the DC score's errors are measured against, and
  the batch's timesteps are per-sample over [0, 1000) where the DC score wants one shared
  s in [100, 900];
- cost: `batch_size` latents x `prompts_per_step` prompts (drawn per step without
  replacement) bound the extra UNet work; the defaults (1 x 3 beside a denoising batch of 4)
  keep a step within 2.5x of naive (the project's cost target).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dc_score import (CLASS_PROMPT, IDENTIFIER_PROMPT, TEMPERATURE, log_probs, predict_per_prompt,
                        shared_noising)
from .base import Method, StepContext
from .lfs_kd import relevant_prompts


class Dsc(Method):
    name = "dsc"

    def __init__(self, weight: float = 1.0, beta: float = 1.0, batch_size: int = 1,
                 prompts_per_step: int = 3, temperature: float = TEMPERATURE, seed: int = 0):
        if prompts_per_step < 2:
            raise ValueError(f"dsc: prompts_per_step is {prompts_per_step}; a DC-score "
                             "distribution needs at least 2 prompts")
        self.weight, self.beta, self.temperature = weight, beta, temperature
        self.batch_size, self.prompts_per_step = batch_size, prompts_per_step
        self.generator = torch.Generator().manual_seed(seed)

    def prepare(self, student, prev, concept, latents) -> None:
        self.latents, self.scheduler, self.embeddings = latents, student.backbone.scheduler, None
        if not prev.concepts:  # first concept: nothing to consolidate
            return
        prompts = relevant_prompts(prev.concepts, concept.class_word, CLASS_PROMPT, IDENTIFIER_PROMPT)
        # none of these prompts holds the new token: constant embeddings
        self.embeddings = student.embed_prompts(prompts)

    def regularizer(self, ctx: StepContext) -> torch.Tensor | None:
        if self.embeddings is None:
            return None
        x0, embeddings = self._draw()
        noisy, t, target = shared_noising(self.scheduler, x0, self.generator)
        teacher = predict_per_prompt(ctx.teacher, noisy, t, embeddings)
        student = predict_per_prompt(ctx.student, noisy, t, embeddings)
        kl = F.kl_div(log_probs(student, target, self.temperature),
                      log_probs(teacher, target, self.temperature),
                      log_target=True, reduction="batchmean")
        return self.weight * kl + self.beta * F.mse_loss(student.float(), teacher.float())

    def _draw(self):
        """This step's latents (with replacement) and prompts (without)."""
        pick = torch.randint(0, len(self.latents), (self.batch_size,), generator=self.generator)
        order = torch.randperm(len(self.embeddings), generator=self.generator)
        return self.latents[pick], self.embeddings[order[: self.prompts_per_step]]
