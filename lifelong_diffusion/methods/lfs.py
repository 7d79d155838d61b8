"""`lfs`: LFS-Diffusion in full, data-free distillation (`lfs_kd`) plus in-context generation.

Training: each denoising forward attends to up to `context_images` of the concept's other
photos (leave-one-out: never an image that is in the batch being denoised), so the adapter
learns to *use* context rather than only to memorise. After the step a bank of
`bank_size` of the concept's latents is kept in the snapshot (state key context/<token>);
evaluation and generation condition the concept's prompt on it. `context_bank: false`
keeps nothing (strict no-retention); generation then runs without context.

Where the paper is silent (docs/methods.md#lfs): the bank holds the first `bank_size` photos' VAE latents (a few
16x16x4 tensors in the world, 64x64x4 for SD-1.5), not the training set as such; the
distillation of earlier concepts runs without their context (the teacher's samples for
their identifier prompts are drawn without it, too).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .. import icgen
from .lfs_kd import LfsKD


class Lfs(LfsKD):
    name = "lfs"
    export_note = ("The in-context bank (`context/<token>` in state.safetensors), which this "
                   "project's generation attends to for a concept's prompt (ICGen), has no "
                   "plain-diffusers or kohya equivalent: these files generate without it, so "
                   "their images differ from the project's.")

    def __init__(self, context_images: int = 2, bank_size: int = 2, context_bank: bool = True,
                 **kd_params):
        super().__init__(**kd_params)
        self.context_images, self.bank_size, self.context_bank = context_images, bank_size, context_bank

    def prepare(self, student, prev, concept, latents) -> None:
        super().prepare(student, prev, concept, latents)
        self.photos = latents[: len(concept.images)]  # train.encode_latents: photos, then any mirrors
        self.bank = icgen.attach(student.unet, self.scheduler, self.uncond, seed=0)

    def conditioning(self, picked: torch.Tensor):
        """Context for one denoising forward: photos not in the batch, at most context_images."""
        in_batch = set((picked % len(self.photos)).tolist())
        free = torch.tensor([i for i in range(len(self.photos)) if i not in in_batch], dtype=torch.long)
        if not len(free) or not self.context_images:
            return nullcontext()
        order = torch.randperm(len(free), generator=self.generator)[: self.context_images]
        return self.bank.conditioning(self.photos[free[order]])

    def state_after_step(self, unet, prev, concept):
        if not self.context_bank:
            return {}
        banks = {k: v for k, v in prev.state.items() if k.startswith(icgen.BANK)}
        return {**banks, f"{icgen.BANK}{concept.token}": self.photos[: self.bank_size].detach().clone()}

    @classmethod
    def prompt_scope(cls, backbone, snap, token):
        """A concept's prompt attends to its context bank (ICGen); other prompts, and
        snapshots kept without a bank, generate without context."""
        latents = snap.state.get(f"{icgen.BANK}{token}")
        if latents is None:
            return nullcontext()
        with torch.no_grad():
            uncond = backbone.unconditional()
        bank = icgen.attach(backbone.unet, backbone.scheduler, uncond)
        bank.generator.manual_seed(0)  # the context's noise is part of the fixed evaluation seeds
        return bank.conditioning(latents.to(backbone.device, torch.float32))
