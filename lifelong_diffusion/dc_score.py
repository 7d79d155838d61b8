"""Diffusion-classifier (DC) score: how strongly the model attributes latents to each prompt.

P_phi(c_i | x) = softmax_i(-e_i / temperature), e_i the denoising error of x under prompt i
(docs/methods.md#diffusion-classifier-score). ewc_dc takes the gradient of its log for a Fisher; dsc matches the teacher's
distribution. Choices where the paper is silent:
- one timestep s and one noise eps (the shape of a single latent) per call, broadcast over
  the whole batch and every prompt: prompts are then compared on exactly the same x_s, so
  their errors differ only by the prompt;
- e_i is the *mean* squared error over the latent's elements, not the sum, so the softmax
  does not sharpen with the resolution (4x16x16 in the world, 4x64x64 for SD-1.5); the
  temperature sets its scale instead. The default 0.01 was measured on the world preset:
  with a trained adapter the errors of different prompts differ by about 0.01 (std), so P
  is informative without being one-hot (a one-hot P has no gradient to build a Fisher
  from, a uniform one nothing to distil). Errors are measured against
  `diffusion.denoising_target`, so epsilon and v-prediction models both work.
Nothing here runs under no_grad: gradients reach the adapter when the caller wants them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .backbone import Conditioning, EpsFn
from .diffusion import denoising_target

T_RANGE = (100, 900)  # the paper's range of s
CLASS_PROMPT = "a photo of a {class_word}"
IDENTIFIER_PROMPT = "a photo of {token} {class_word}"
TEMPERATURE = 0.01

def shared_noising(scheduler, x0: torch.Tensor, generator: torch.Generator,
                   t_range: tuple[int, int] = T_RANGE):
    """x_s, s (per row) and the denoising target for one shared (s, eps) drawn for the batch."""
    s = torch.randint(t_range[0], t_range[1] + 1, (1,), generator=generator)
    eps = torch.randn(x0.shape[1:], generator=generator).to(x0).expand_as(x0)
    t = s.expand(len(x0)).to(x0.device)
    return scheduler.add_noise(x0, eps, t), t, denoising_target(scheduler, x0, eps, t)


def predict_per_prompt(eps_fn: EpsFn, noisy: torch.Tensor, t: torch.Tensor,
                       prompts: Conditioning) -> torch.Tensor:
    """(B, K, ...) predictions for B latents under K prompts' conditioning, in one batched
    call: the latents repeated K times, each prompt's conditioning repeated for the B latents."""
    b, k = len(noisy), len(prompts)
    out = eps_fn(noisy.repeat(k, 1, 1, 1), t.repeat(k), prompts.repeat_interleave(b))
    return out.reshape(k, b, *out.shape[1:]).transpose(0, 1)


def log_probs(predictions: torch.Tensor, target: torch.Tensor,
              temperature: float = TEMPERATURE) -> torch.Tensor:
    """(B, K) log-softmax over prompts of -e_ik / temperature, e_ik the mean squared error."""
    errors = (predictions.float() - target.float().unsqueeze(1)).pow(2).flatten(2).mean(2)
    return F.log_softmax(-errors / temperature, dim=1)


def dc_log_probs(eps_fn: EpsFn, scheduler, x0: torch.Tensor, prompts: Conditioning,
                 generator: torch.Generator, t_range: tuple[int, int] = T_RANGE,
                 temperature: float = TEMPERATURE) -> torch.Tensor:
    """(B, K) log P(prompt k | x0_b) under `eps_fn` (e.g. the student), one shared (s, eps)."""
    noisy, t, target = shared_noising(scheduler, x0, generator, t_range)
    return log_probs(predict_per_prompt(eps_fn, noisy, t, prompts), target, temperature)


def concept_prompt_set(token: str, class_word: str, past: list[dict], k: int,
                       generator: torch.Generator | None) -> list[str]:
    """C for a concept: its class prompt, the identifier prompts of up to k past concepts,
    its own identifier prompt last. With more than k past concepts, k are drawn with the
    seeded generator (kept in learning order), so every past concept is represented across
    draws while the batched UNet call stays K <= k + 2 wide; with k or fewer the generator
    is not used."""
    chosen = past
    if len(past) > k:
        chosen = [past[i] for i in sorted(torch.randperm(len(past), generator=generator)[:k].tolist())]
    return ([CLASS_PROMPT.format(class_word=class_word)]
            + [IDENTIFIER_PROMPT.format(**c) for c in chosen]
            + [IDENTIFIER_PROMPT.format(token=token, class_word=class_word)])
