"""`ewc` and `ewc_dc`: online elastic weight consolidation of the continued LoRA adapter.

Penalty (lambda/2) * sum_i F_i (phi_i - phi*_i)^2 over the student adapter's parameters.
The anchor phi* is S_{t-1}'s adapter, which the snapshot already holds (prev.adapter), so
only the Fisher is kept in the method state, under `fisher/<peft adapter key>` (the keys of
lora.adapter_weights, so each entry maps onto one parameter). After the step, a Fisher pass
over the concept's latents (photos and mirrors) gives F_t, and F <- gamma * F_{t-1} + F_t.
The two methods differ only in the log-likelihood whose squared gradient makes the Fisher:
`ewc` the denoising loss the step trains with, `ewc_dc` the DC score log P(c_t | x).

Choices where the papers are silent (docs/methods.md#ewc):
- the empirical Fisher is taken per latent and per draw (one backward each, `draws` draws of
  (s, eps) per latent), never from a batch-summed gradient, whose square is not a Fisher;
- F_t is divided by its mean over all entries before it is accumulated, so each concept
  weighs the same and the penalty is lambda/2 * ||phi - phi*||^2 for an average entry:
  lambda then has the scale of an L2 weight, whatever the model or the gradient source;
- the draws come from a generator seeded with `seed` at each pass, so a Fisher pass can be
  repeated exactly (the tests recompute F_t);
- lambda is tuned per base model; params.yaml's value is the tuning rule's choice on the
  world (reports/methods_tuning.md): 1 already freezes the adapter after the first concept,
  0.01 trades (ewc_dc F 0.11 at LA 0.38), 0.001 forgets like naive.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..dc_score import IDENTIFIER_PROMPT, TEMPERATURE, concept_prompt_set, dc_log_probs, shared_noising
from ..diffusion import snr_weight
from ..lora import STUDENT, named_adapter_parameters
from .base import Method, StepContext

FISHER = "fisher/"


def stored_fisher(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(FISHER):]: v for k, v in state.items() if k.startswith(FISHER)}


def accumulate(previous: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor],
               gamma: float) -> dict[str, torch.Tensor]:
    """Online EWC: F <- gamma * F_prev + F_t (F_prev absent on the first step)."""
    return {k: gamma * previous[k].to(v) + v if k in previous else v for k, v in fresh.items()}


def normalised(fisher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Divide by the mean entry; an all-zero Fisher (no gradient at all) stays zero."""
    mean = torch.cat([v.flatten() for v in fisher.values()]).mean()
    scale = mean.clamp(min=torch.finfo(mean.dtype).tiny)
    return {k: v / scale for k, v in fisher.items()}


class FisherPenalty(Method):
    """Online EWC with the gradient source left to subclasses (`log_likelihood`)."""

    def __init__(self, weight: float = 10.0, gamma: float = 0.9, draws: int = 2, seed: int = 0):
        self.weight, self.gamma, self.draws, self.seed = weight, gamma, draws, seed
        self.seconds = 0.0

    def prepare(self, student, prev, concept, latents) -> None:
        self.student, self.past, self.concept, self.latents = student, prev.concepts, concept, latents
        params, fisher = named_adapter_parameters(student.unet, STUDENT), stored_fisher(prev.state)
        unknown = sorted(set(fisher) - set(params))
        if unknown:
            raise ValueError(f"the Fisher in the previous snapshot does not fit the adapter (e.g. "
                             f"{unknown[0]}); was it trained with other train.lora_* settings?")
        self.terms = [(params[k], prev.adapter[k].to(params[k]), f.to(params[k]))
                      for k, f in fisher.items()]

    def regularizer(self, ctx: StepContext) -> torch.Tensor | None:
        if not self.terms:  # first concept: no Fisher yet, nothing to consolidate
            return None
        penalty = sum((f * (p - anchor).pow(2)).sum() for p, anchor, f in self.terms)
        return self.weight / 2 * penalty

    def state_after_step(self, unet, prev, concept) -> dict[str, torch.Tensor]:
        started = time.perf_counter()
        fisher = accumulate(stored_fisher(prev.state), self.fisher_pass(unet), self.gamma)
        self.seconds = time.perf_counter() - started
        return {FISHER + k: v for k, v in fisher.items()}

    def fisher_pass(self, unet) -> dict[str, torch.Tensor]:
        """Normalised F_t: the mean squared gradient of `log_likelihood` per latent and draw."""
        params = named_adapter_parameters(unet, STUDENT)
        sums = {k: torch.zeros_like(p) for k, p in params.items()}
        generator = torch.Generator().manual_seed(self.seed)
        for x0 in self.latents.split(1):
            for _ in range(self.draws):
                grads = torch.autograd.grad(self.log_likelihood(x0, generator),
                                            list(params.values()))
                for key, grad in zip(sums, grads):
                    sums[key] += grad.detach().pow(2)
        return normalised(sums)

    def log_likelihood(self, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The log-likelihood of one latent under the student, with gradient."""
        raise NotImplementedError

    def timing(self) -> dict:
        return {"fisher_seconds": self.seconds}


class Ewc(FisherPenalty):
    """Fisher of the denoising loss the step trains with: the concept's identifier prompt,
    s over the whole training range, the same min-SNR weight as the training loss."""

    name = "ewc"

    def log_likelihood(self, x0, generator):
        scheduler = self.student.backbone.scheduler
        noisy, t, target = shared_noising(scheduler, x0, generator,
                                          (0, scheduler.config.num_train_timesteps - 1))
        prompt = IDENTIFIER_PROMPT.format(token=self.concept.token, class_word=self.concept.class_word)
        pred = self.student.student_eps(noisy, t, self.student.embed_prompts([prompt]))
        weight = snr_weight(scheduler, t.cpu(), self.student.snr_gamma).to(pred)
        return -(weight * F.mse_loss(pred.float(), target.float(), reduction="none").mean((1, 2, 3))).sum()


class EwcDC(FisherPenalty):
    """Fisher of the DC score log P(c_t | x) over the prompt set C of the concept (its class
    prompt, up to `past_prompts` sampled past identifier prompts, its own identifier prompt):
    it protects the parameters that tell this concept apart, not every parameter the
    denoising loss touches. C is drawn afresh for each latent and draw."""

    name = "ewc_dc"

    def __init__(self, past_prompts: int = 4, temperature: float = TEMPERATURE, **params):
        super().__init__(**params)
        self.past_prompts, self.temperature = past_prompts, temperature

    def log_likelihood(self, x0, generator):
        prompts = concept_prompt_set(self.concept.token, self.concept.class_word, self.past,
                                     self.past_prompts, generator)
        log_p = dc_log_probs(self.student.student_eps, self.student.backbone.scheduler, x0,
                             self.student.embed_prompts(prompts), generator,
                             temperature=self.temperature)
        return log_p[0, -1]  # the current identifier prompt is last in C
