"""Slow smoke test: SD-1.5's real architecture (random weights, built offline) trains one
lifelong step and evaluates at 64 px on CPU, through the same code as every other model."""
from __future__ import annotations

import pytest
from safetensors.torch import load_file

from lifelong_diffusion.evaluate import EvalConfig, evaluate_snapshot
from lifelong_diffusion.ingest import ingest_concept
from lifelong_diffusion.snapshot import empty_snapshot, load_snapshot, read_train_log, save_snapshot
from lifelong_diffusion.train import TrainConfig, train_concept
from lifelong_diffusion.world import DEFAULT_SEQUENCE, concept_by_name, write_concept_folder

SIZE = 64


@pytest.mark.slow
def test_sd15_trains_and_evaluates_at_64px(tmp_path):
    name = DEFAULT_SEQUENCE[0]
    raw = write_concept_folder(concept_by_name(name), tmp_path / "concepts", size=SIZE)
    ingest_concept(raw, tmp_path / "processed" / name, resolution=SIZE, min_size=SIZE)
    save_snapshot(empty_snapshot("sd15"), tmp_path / "base")
    cfg = TrainConfig(steps=2, batch_size=1, device="cpu", resolution=SIZE,
                      lora_targets=["to_q", "to_k", "to_v", "to_out.0"])
    train_concept(tmp_path / "base", tmp_path / "processed" / name, tmp_path / name, cfg, progress=False)
    snap = load_snapshot(tmp_path / name)
    assert snap.tokens["<c1>"].shape == (768,)  # CLIP ViT-L/14's text width
    adapter = load_file(tmp_path / name / "adapter.safetensors")
    assert len(adapter) == 2 * 4 * 32  # A and B of 4 projections in SD-1.5's 32 attention blocks
    assert len(read_train_log(tmp_path / name)["loss"]) == 2
    metrics = evaluate_snapshot(tmp_path / name, tmp_path / "processed", tmp_path / "eval",
                                EvalConfig(seeds=[0], steps=2, device="cpu", resolution=SIZE))
    assert metrics["per_concept"][name]["samples"]["clip_i"][0] <= 1.0
