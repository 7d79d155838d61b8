"""DC score: one shared (s, eps), prompts batched in (B, K) order, softmax of negative errors,
gradients to the weights, the prompt set C, and the world base classifying its own renders."""
from __future__ import annotations


import numpy as np
import torch
from diffusers import DDPMScheduler

from lifelong_diffusion.dc_score import (concept_prompt_set, dc_log_probs, log_probs,
                                         predict_per_prompt, shared_noising)
from lifelong_diffusion.backbone import Backbone, Conditioning
from lifelong_diffusion.train import encode_latents
from lifelong_diffusion.world.render import render, sample_scene

SCHEDULER = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                          beta_start=0.00085, beta_end=0.012, prediction_type="epsilon")


def test_one_shared_timestep_and_noise_per_batch():
    x0 = torch.randn(3, 4, 8, 8)
    noisy, t, target = shared_noising(SCHEDULER, x0, torch.Generator().manual_seed(0))
    assert len(set(t.tolist())) == 1 and 100 <= int(t[0]) <= 900
    assert all(torch.equal(target[0], row) for row in target)  # epsilon model: target = eps
    ac = SCHEDULER.alphas_cumprod[t[0]]
    assert torch.allclose(noisy, ac.sqrt() * x0 + (1 - ac).sqrt() * target, atol=1e-6)


def test_prompts_are_one_batched_call_in_latent_prompt_order():
    calls = []

    def eps_fn(noisy, t, cond):
        calls.append(len(noisy))
        return noisy + cond.states[:, 0, 0].view(-1, 1, 1, 1)

    noisy, t = torch.randn(2, 4, 3, 3), torch.full((2,), 500)
    embeddings = Conditioning(torch.arange(3.0).view(3, 1, 1).expand(3, 5, 7))
    out = predict_per_prompt(eps_fn, noisy, t, embeddings)
    assert calls == [6] and out.shape == (2, 3, 4, 3, 3)
    for b in range(2):
        for k in range(3):
            assert torch.equal(out[b, k], noisy[b] + k)


def test_log_probs_are_a_softmax_of_negative_mean_squared_errors():
    target = torch.zeros(1, 4, 2, 2)
    predictions = torch.stack([target, target + 0.1, target + 0.2], 1)  # errors 0, 0.01, 0.04
    got = log_probs(predictions, target, temperature=0.01)
    assert torch.allclose(got, torch.log_softmax(torch.tensor([[0.0, -1.0, -4.0]]), 1))


def test_gradients_flow_to_the_model():
    weight = torch.nn.Parameter(torch.tensor(0.5))
    eps_fn = lambda noisy, t, cond: weight * noisy + cond.states.mean((1, 2)).view(-1, 1, 1, 1)
    out = dc_log_probs(eps_fn, SCHEDULER, torch.randn(2, 4, 3, 3), Conditioning(torch.randn(3, 5, 7)),
                       torch.Generator().manual_seed(0))
    out[:, 0].sum().backward()
    assert out.shape == (2, 3) and torch.allclose(out.exp().sum(1), torch.ones(2))
    assert weight.grad is not None and weight.grad.abs() > 0


def test_prompt_set_is_class_prompt_then_past_identifiers_then_own():
    past = [{"token": f"<c{i}>", "class_word": "star"} for i in range(1, 6)]
    gen = torch.Generator().manual_seed(0)
    assert concept_prompt_set("<c9>", "heart", past[:2], 4, gen) == [
        "a photo of a heart", "a photo of <c1> star", "a photo of <c2> star", "a photo of <c9> heart"]
    sampled = concept_prompt_set("<c9>", "heart", past, 2, gen)
    assert len(sampled) == 4 and sampled[-1] == "a photo of <c9> heart"
    assert set(sampled[1:3]) < {f"a photo of <c{i}> star" for i in range(1, 6)}
    seeded = [concept_prompt_set("<c9>", "heart", past, 2, torch.Generator().manual_seed(1))
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_the_world_base_tells_the_colour_of_its_own_renders():
    """The DC score as a classifier on a model whose text conditioning is known to work: the
    world base draws the prompted colour every time (benchmarks.world), so its denoising
    errors must pick the prompt naming a render's colour (chance: 1 in 3). Measured 12/12
    on the shipped 40 px base, renders at its size, with 8 draws of (s, eps) per render (4
    draws: 9/12). (A naive LoRA's identifier is not a good
    subject: on the world base the adapter changes the class prompt as much as the
    identifier prompt, so their errors tie.)"""
    backbone = Backbone.load("world", "cpu")
    colors = ("red", "blue", "green")
    rng = np.random.default_rng(0)
    hits = []
    with torch.no_grad():
        embeddings = backbone.encode([f"a photo of a {c} star" for c in colors])
        for k, color in enumerate(colors):
            renders = [render(sample_scene(rng, shape="star", color=color, spread=0.3), backbone.resolution)
                       for _ in range(4)]
            gen = torch.Generator().manual_seed(0)
            x0 = encode_latents(backbone, renders)
            mean = sum(dc_log_probs(backbone.predict, backbone.scheduler, x0, embeddings, gen)
                       for _ in range(8))
            hits += (mean.argmax(1) == k).tolist()
    assert sum(hits) >= 10, hits
