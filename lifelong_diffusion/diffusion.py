"""Diffusion-loss pieces shared by pretraining and the lifelong training step."""

from __future__ import annotations

import torch


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
