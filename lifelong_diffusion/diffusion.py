"""Diffusion-loss pieces shared by pretraining and the lifelong training step."""

from __future__ import annotations

import torch

from .backbone import Conditioning, EpsFn


def snr_weight(scheduler, t: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): nearly-clean timesteps, which otherwise
    dominate the gradient, are clipped, so the coarse layout (colour, shape) is learnt first.

    Written in the target's own space as min(1, gamma / s), with s = SNR for epsilon and
    SNR + 1 for v and x0. The textbook v form, min(SNR, gamma) / (SNR + 1), is 0 at the
    zero-SNR step, the very step that decides the colour when sampling from pure noise.
    """
    if gamma is None:
        return torch.ones(len(t))
    ac = scheduler.alphas_cumprod[t]
    snr = ac / (1 - ac).clamp(min=1e-8)
    s = snr if scheduler.config.prediction_type == "epsilon" else snr + 1
    return (gamma / s.clamp(min=1e-8)).clamp(max=1.0)


def denoising_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet predicts under the scheduler's prediction_type: v, noise or the clean latents."""
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    return noise if kind == "epsilon" else x0


@torch.no_grad()
def sample_latents(eps_fn: EpsFn, scheduler, cond: Conditioning, uncond: Conditioning, shape: tuple[int, ...], steps: int,
                   guidance: float, generator: torch.Generator) -> torch.Tensor:
    """Clean latents of `shape` for each row of `cond` by DDIM with classifier-free guidance
    (`uncond`: one row).

    A bare loop instead of the diffusers pipeline: callers want latents, not images, from
    whichever adapter is active, without touching the pipeline's own scheduler.
    """
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    latents = torch.randn((len(cond), *shape), generator=generator)
    latents = (latents * ddim.init_noise_sigma).to(cond.states)
    both = Conditioning.cat([uncond.expand(len(cond)), cond])
    for t in ddim.timesteps:
        out_uncond, out_cond = eps_fn(torch.cat([latents, latents]), t, both).chunk(2)
        guided = out_uncond + guidance * (out_cond - out_uncond)
        latents = ddim.step(guided.to(latents), t, latents).prev_sample
    return latents
