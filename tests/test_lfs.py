"""lfs: in-context generation (attention processors) and the method around it (tiny preset)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lifelong_diffusion import icgen
from lifelong_diffusion.backbone import Backbone, Conditioning
from lifelong_diffusion.evaluate import EvalConfig, evaluate_snapshot
from lifelong_diffusion.snapshot import load_snapshot, save_snapshot
from lifelong_diffusion.train import TrainConfig, train_concept
from lifelong_diffusion.world import DEFAULT_SEQUENCE

C1, C2 = DEFAULT_SEQUENCE[:2]
KD = {"samples_per_prompt": 1, "batch_size": 1, "sampler_steps": 2}
LFS = TrainConfig(method="lfs", steps=3, batch_size=2, device="cpu", lr=1e-2,
                  method_params={"lfs": KD})
EVAL = EvalConfig(seeds=[0, 1], steps=3, device="cpu")


@pytest.fixture(scope="module")
def unet_inputs():
    backbone = Backbone.load("tiny-random", "cpu")
    unet = backbone.unet
    size, channels = unet.config.sample_size, unet.config.in_channels
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, size, size, generator=gen)
    cond = torch.randn(2, 4, unet.config.cross_attention_dim, generator=gen)
    context = torch.randn(3, channels, size, size, generator=gen)
    with torch.no_grad():
        plain = unet(x, torch.tensor([10, 500]), cond).sample
    bank = icgen.attach(unet, backbone.scheduler, Conditioning(torch.zeros(1, 4, unet.config.cross_attention_dim)))
    return unet, bank, x, cond, context, plain


@torch.no_grad()
def test_processors_change_nothing_without_context(unet_inputs):
    unet, bank, x, cond, _, plain = unet_inputs
    assert any(type(p).__name__ == "ContextAttnProcessor" for p in unet.attn_processors.values())
    assert torch.allclose(unet(x, torch.tensor([10, 500]), cond).sample, plain, atol=1e-6)
    with bank.conditioning(None):
        assert torch.allclose(unet(x, torch.tensor([10, 500]), cond).sample, plain, atol=1e-6)


@torch.no_grad()
def test_context_changes_the_prediction_for_each_timestep_form(unet_inputs):
    unet, bank, x, cond, context, plain = unet_inputs
    with bank.conditioning(context):
        per_sample = unet(x, torch.tensor([10, 500]), cond).sample  # training: a timestep each
        shared = unet(x, 500, cond).sample  # sampling: one timestep for the batch
    assert not torch.allclose(per_sample, plain, atol=1e-4)
    assert shared.shape == plain.shape and torch.isfinite(shared).all()
    assert bank.tokens == {} and bank.latents is None  # switched off after the block


@pytest.fixture(scope="module")
def trained(world_concepts, tiny_start):
    processed, out = world_concepts / "processed", tiny_start("lfs")
    train_concept(out / "base", processed / C1, out / C1, LFS, progress=False)
    train_concept(out / C1, processed / C2, out / C2, LFS, progress=False)
    strict = replace(LFS, method_params={"lfs": {**KD, "context_bank": False}})
    train_concept(out / "base", processed / C1, out / "strict", strict, progress=False)
    return out, processed


def test_snapshot_keeps_a_small_bank_per_concept(trained):
    out, _ = trained
    s2 = load_snapshot(out / C2)
    banks = {k: v for k, v in s2.state.items() if k.startswith(icgen.BANK)}
    assert set(banks) == {f"{icgen.BANK}{c['token']}" for c in s2.concepts}
    s1 = load_snapshot(out / C1)
    key = f"{icgen.BANK}{s1.concepts[0]['token']}"
    assert torch.equal(banks[key], s1.state[key])  # carried over unchanged
    assert banks[key].shape[0] == 2  # bank_size photos, not the whole training set
    assert load_snapshot(out / "strict").state == {}  # context_bank: false retains nothing


def test_generation_uses_the_bank(trained, tmp_path):
    out, processed = trained
    with_bank = evaluate_snapshot(out / C1, processed, tmp_path / "a", EVAL)
    snap = load_snapshot(out / C1)
    snap.state = {}  # the same adapter and token without the bank
    save_snapshot(snap, tmp_path / "no-bank")
    without = evaluate_snapshot(tmp_path / "no-bank", processed, tmp_path / "b", EVAL)
    assert with_bank["per_concept"][C1] != without["per_concept"][C1]
    assert with_bank["class_prompts"] == without["class_prompts"]  # class prompts: no context
