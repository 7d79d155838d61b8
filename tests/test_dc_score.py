"""DC score: one shared (s, eps), prompts batched in (B, K) order, softmax of negative errors,
gradients to the weights, the prompt set C, and a model that learned two concepts telling
them apart (world preset) where the untrained one does not."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from lifelong_diffusion.dc_score import (concept_prompt_set, dc_log_probs, log_probs,
                                         predict_per_prompt, shared_noising)
from lifelong_diffusion.evaluate import personalized_pipeline
from lifelong_diffusion.lora import add_tokens, word_embedding
from lifelong_diffusion.snapshot import empty_snapshot, load_snapshot, save_snapshot
from lifelong_diffusion.train import (TrainConfig, encode_latents, read_processed_concept, tokenize,
                                      train_concept)
from lifelong_diffusion.world import DEFAULT_SEQUENCE

C1, C2 = DEFAULT_SEQUENCE[:2]
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
        return noisy + cond[:, 0, 0].view(-1, 1, 1, 1)

    noisy, t = torch.randn(2, 4, 3, 3), torch.full((2,), 500)
    embeddings = torch.arange(3.0).view(3, 1, 1).expand(3, 5, 7)
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
    unet = lambda noisy, t, cond: SimpleNamespace(sample=weight * noisy + cond.mean((1, 2)).view(-1, 1, 1, 1))
    out = dc_log_probs(unet, SCHEDULER, torch.randn(2, 4, 3, 3), torch.randn(3, 5, 7),
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


@pytest.fixture(scope="module")
def two_concepts(world_concepts, tmp_path_factory):
    """S_2 of the world preset after learning both concepts (naive, 30 steps each)."""
    out = tmp_path_factory.mktemp("dc")
    save_snapshot(empty_snapshot("world"), out / "base")
    cfg = TrainConfig(steps=30, lr=1e-2, device="cpu")
    train_concept(out / "base", world_concepts / "processed" / C1, out / C1, cfg, progress=False)
    train_concept(out / C1, world_concepts / "processed" / C2, out / C2, cfg, progress=False)
    concepts = [read_processed_concept(world_concepts / "processed" / c) for c in (C1, C2)]
    return load_snapshot(out / C2), concepts


def accuracy(pipe, concepts) -> float:
    """Share of both concepts' latents that the DC score (log-probs averaged over 8 draws)
    puts on their own identifier prompt, against their class prompt and the other's."""
    hits = []
    for concept in concepts:
        others = [{"token": c.token, "class_word": c.class_word} for c in concepts if c is not concept]
        prompts = concept_prompt_set(concept.token, concept.class_word, others, 1, None)
        with torch.no_grad():
            embeddings = pipe.text_encoder(tokenize(pipe.tokenizer, prompts))[0]
            x0 = encode_latents(pipe, concept.images)
            gen = torch.Generator().manual_seed(0)
            mean = sum(dc_log_probs(pipe.unet, pipe.scheduler, x0, embeddings, gen) for _ in range(8))
        hits += (mean.argmax(1) == len(prompts) - 1).tolist()
    return sum(hits) / len(hits)


def test_a_model_that_learned_two_concepts_classifies_their_images(two_concepts):
    """Pooled over both concepts' 20 latents: per-concept shares move with the thread count
    (1 thread: 1.0 / 0.7, 2 threads: 1.0 / 0.4 after these 30 steps), the pooled one stays
    well above chance and above the untrained model's."""
    snap, concepts = two_concepts
    learned = accuracy(personalized_pipeline(snap, "cpu"), concepts)
    untrained = personalized_pipeline(replace(snap, adapter={}, tokens={}), "cpu")
    add_tokens(untrained.tokenizer, untrained.text_encoder,
               {c.token: word_embedding(untrained.tokenizer, untrained.text_encoder, c.class_word)
                for c in concepts})
    before = accuracy(untrained, concepts)
    assert learned > 1 / 3 + 0.2, learned  # chance: 1 of 3 prompts
    assert before < learned - 0.3, (before, learned)
