"""Mixed precision and gradient checkpointing in the training step (tiny preset on CPU)."""
from __future__ import annotations

from statistics import mean

import pytest
import torch
from safetensors.torch import load_file

from lifelong_diffusion.snapshot import read_train_log
from lifelong_diffusion.train import TrainConfig, train_concept
from lifelong_diffusion.world import DEFAULT_SEQUENCE

C1 = DEFAULT_SEQUENCE[0]
CFG = TrainConfig(steps=40, batch_size=2, lr=1e-2, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def trained(world_concepts, tiny_start):
    processed, out = world_concepts / "processed", tiny_start("precision")
    runs = {"fp32": CFG, "bf16": TrainConfig(**{**vars(CFG), "precision": "bf16"}),
            "checkpointed": TrainConfig(**{**vars(CFG), "gradient_checkpointing": True})}
    fingerprints = {name: train_concept(out / "base", processed / C1, out / name, cfg, progress=False)
                    for name, cfg in runs.items()}
    return out, fingerprints


def test_bf16_trains_and_keeps_the_adapter_and_token_in_fp32(trained):
    out, _ = trained
    losses = read_train_log(out / "bf16")["denoise"]
    assert mean(losses[-10:]) < 0.9 * mean(losses[:10])
    adapter, tokens = load_file(out / "bf16" / "adapter.safetensors"), load_file(out / "bf16" / "tokens.safetensors")
    assert {t.dtype for t in adapter.values()} == {t.dtype for t in tokens.values()} == {torch.float32}
    fp32 = load_file(out / "fp32" / "adapter.safetensors")
    assert any(not torch.equal(adapter[k], fp32[k]) for k in adapter)  # it did run in bf16


def test_gradient_checkpointing_computes_the_same_step(trained):
    _, fingerprints = trained
    assert fingerprints["checkpointed"] == fingerprints["fp32"]
