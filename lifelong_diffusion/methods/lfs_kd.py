"""`lfs_kd`: data-free knowledge distillation from the teacher snapshot (LFS-Diffusion).

Before the first optimizer step the teacher S_{t-1} samples a small cache of clean latents
for the *relevant prompts*: the class prompt of every concept learned so far and of the new
one ("a photo of a star") and the identifier prompt of every earlier concept ("a photo of
<c1> star"). Each optimizer step then re-noises a few cached latents to random timesteps and
pulls the student's prediction towards the teacher's on the same input. No image of an
earlier concept is read: the teacher's own samples stand in for them.

Choices where the paper is silent (defaults measured on the world preset, reports/):
- the cache is drawn once per step (lifelong step, i.e. per concept), with the same DDIM
  sampler and guidance as evaluation, so the student is held to what the teacher really
  generates for those prompts;
- the distillation batch is smaller than the denoising batch: its gradient is a
  regularizer, and every extra sample costs a student forward/backward and a teacher forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..diffusion import sample_latents
from ..lora import STUDENT, TEACHER, using_adapter
from .base import Method, StepContext


def relevant_prompts(previous: list[dict], class_word: str, class_prompt: str,
                     identifier_prompt: str) -> list[str]:
    """Class prompts of all concepts (earlier ones and the new one's class), then the earlier
    concepts' identifier prompts; duplicates (two concepts of one class) once."""
    classes = [class_prompt.format(class_word=c["class_word"]) for c in previous]
    classes.append(class_prompt.format(class_word=class_word))
    identifiers = [identifier_prompt.format(**c) for c in previous]
    return list(dict.fromkeys(classes + identifiers))


class LfsKD(Method):
    name = "lfs_kd"

    def __init__(self, weight: float = 1.0, samples_per_prompt: int = 4, batch_size: int = 2,
                 sampler_steps: int = 10, guidance_scale: float = 5.0,
                 class_prompt: str = "a photo of a {class_word}",
                 identifier_prompt: str = "a photo of {token} {class_word}", seed: int = 0):
        self.weight, self.samples_per_prompt, self.batch_size = weight, samples_per_prompt, batch_size
        self.sampler_steps, self.guidance_scale = sampler_steps, guidance_scale
        self.class_prompt, self.identifier_prompt = class_prompt, identifier_prompt
        self.generator = torch.Generator().manual_seed(seed)

    def prepare(self, student, prev, concept, latents) -> None:
        prompts = relevant_prompts(prev.concepts, concept.class_word, self.class_prompt,
                                   self.identifier_prompt)
        backbone = student.backbone
        # none of these prompts holds the new token: constant conditioning
        self.cond = student.embed_prompts(prompts).repeat_interleave(self.samples_per_prompt)
        with torch.no_grad():
            self.uncond = backbone.unconditional()
        self.scheduler = backbone.scheduler
        with using_adapter(student.unet, TEACHER, restore=STUDENT), backbone.autocast():
            self.latents = sample_latents(backbone.predict, self.scheduler, self.cond, self.uncond,
                                          backbone.latent_shape, self.sampler_steps,
                                          self.guidance_scale, self.generator)

    def regularizer(self, ctx: StepContext) -> torch.Tensor:
        pick = torch.randint(0, len(self.latents), (self.batch_size,), generator=self.generator)
        x0, cond = self.latents[pick], self.cond[pick]
        noise = torch.randn(x0.shape, generator=self.generator).to(x0)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(pick),),
                          generator=self.generator).to(x0.device)
        noisy = self.scheduler.add_noise(x0, noise, t)
        target = ctx.teacher(noisy, t, cond)
        pred = ctx.student(noisy, t, cond)
        return self.weight * F.mse_loss(pred.float(), target.float())
