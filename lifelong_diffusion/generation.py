"""A snapshot S_t as a model that generates images: evaluation, `lifelong generate`, the
MLflow model and export all use this, and it asks the snapshot's method what the snapshot
means (methods/base.py: load_for_generation, prompt_scope) instead of guessing."""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from PIL import Image

from .backbone import Backbone
from .methods import snapshot_method
from .snapshot import Snapshot


class PersonalizedModel:
    """The base model with S_t applied, sampling with DDIM (fast, deterministic per seed)."""

    def __init__(self, snap: Snapshot, device: str = "cpu", precision: str = "fp32",
                 resolution: int | None = None):
        self.snap, self.method = snap, snapshot_method(snap)
        # by default the size the snapshot was trained at (base.resolution), else the model's
        resolution = resolution or snap.config.get("resolution")
        self.backbone = Backbone.load(snap.base_model, device, precision, resolution=resolution)
        self.method.load_for_generation(self.backbone, snap)
        pipe = self.backbone.pipe
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)

    @property
    def tokens(self) -> list[str]:
        return [c["token"] for c in self.snap.concepts]

    def token_in(self, prompt: str) -> str | None:
        """The first learned token in `prompt`, None for a plain prompt (tokens are
        "<...>", so a substring is a whole token)."""
        found = [(prompt.find(t), t) for t in self.tokens if t in prompt]
        return min(found)[1] if found else None

    @torch.no_grad()
    def generate(self, prompt: str, seeds: list[int], steps: int = 20,
                 guidance_scale: float = 5.0) -> list[Image.Image]:
        """One image per seed; each seed has its own generator, so the batch changes at most the
        last bit of a few pixels (CPU kernels sum in a batch-dependent order)."""
        size = self.backbone.resolution
        with self.method.prompt_scope(self.backbone, self.snap, self.token_in(prompt)), \
                self.backbone.autocast():
            return self.backbone.pipe(
                [prompt] * len(seeds), height=size, width=size, num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=[torch.Generator().manual_seed(s) for s in seeds],
            ).images
