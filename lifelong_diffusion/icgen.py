"""In-context generation (ICGen, LFS-Diffusion): self-attention also looks at a concept's
context images.

Every self-attention layer (`attn1`) of the UNet gets a `ContextAttnProcessor`. Before each
UNet call that should be conditioned, a hook first runs the UNet on the context latents,
noised to the same timestep (no grad, empty prompt), and each layer records its input
tokens; in the real call those tokens are appended to the layer's keys and values, so the
sample can copy what the context shows (a pattern, a colour scheme) instead of having to
have stored it all in the adapter.

The context is switched on by `ContextBank.conditioning(latents)`; outside it the UNet
behaves exactly as without processors, so teacher calls, distillation and class prompts
are unaffected. Choices where the paper is silent (docs/methods.md#lfs): the context pass uses the empty prompt
(the context is read for its appearance, not its caption), and a batch with per-sample
timesteps (training) runs the context once per sample at that sample's timestep.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from .backbone import Conditioning, unet_forward

SELF_ATTENTION = ".attn1.processor"
BANK = "context/"  # snapshot state key prefix of a concept's context bank: context/<token>


class ContextBank:
    """The recorded context tokens of one conditioned UNet call, shared by all processors."""

    def __init__(self, unet, scheduler, uncond: Conditioning, generator: torch.Generator):
        self.scheduler, self.uncond, self.generator = scheduler, uncond, generator
        self.latents: torch.Tensor | None = None  # (K, C, h, w) clean context latents
        self.recording = False
        self.tokens: dict[str, torch.Tensor] = {}
        processors = {name: ContextAttnProcessor(self, name) if name.endswith(SELF_ATTENTION) else proc
                      for name, proc in unet.attn_processors.items()}
        unet.set_attn_processor(processors)
        unet.register_forward_pre_hook(self._record_context, with_kwargs=True)

    @contextmanager
    def conditioning(self, latents: torch.Tensor | None):
        """UNet calls inside the block see `latents` as context (None or empty: no context)."""
        self.latents = latents if latents is not None and len(latents) else None
        try:
            yield
        finally:
            self.latents, self.tokens = None, {}

    def _record_context(self, unet, args, kwargs):
        if self.latents is None or self.recording:
            return None
        sample, timestep = args[0], args[1] if len(args) > 1 else kwargs["timestep"]
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        per_sample = len(t) > 1  # training: one timestep per sample
        context = self.latents.repeat(len(sample), 1, 1, 1) if per_sample else self.latents
        steps = t.repeat_interleave(len(self.latents)) if per_sample else t.expand(len(context))
        noise = torch.randn(context.shape, generator=self.generator).to(context)
        noisy = self.scheduler.add_noise(context, noise, steps)
        self.recording, self.tokens = True, {}
        try:
            with torch.no_grad():
                unet_forward(unet, noisy, steps, self.uncond.expand(len(context)).to(noisy))
        finally:
            self.recording = False
        groups = len(sample) if per_sample else 1
        self.tokens = {name: h.reshape(groups, -1, h.shape[-1]) for name, h in self.tokens.items()}
        return None


class ContextAttnProcessor:
    """SDPA attention whose keys/values also include the recorded context tokens."""

    def __init__(self, bank: ContextBank, name: str):
        self.bank, self.name, self.inner = bank, name, AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):
        bank = self.bank
        if bank.recording and hidden_states.ndim == 3:
            bank.tokens[self.name] = hidden_states.detach()
        elif encoder_hidden_states is None and self.name in bank.tokens:
            context = bank.tokens[self.name]
            context = context.expand(len(hidden_states), -1, -1) if len(context) == 1 else context
            encoder_hidden_states = torch.cat([hidden_states, context.to(hidden_states)], 1)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


def attach(unet, scheduler, uncond: Conditioning, seed: int = 0) -> ContextBank:
    """Install ICGen on `unet` (once); returns the bank that switches context on and off."""
    if getattr(unet, "_icgen_bank", None) is None:
        unet._icgen_bank = ContextBank(unet, scheduler, uncond, torch.Generator().manual_seed(seed))
    return unet._icgen_bank
