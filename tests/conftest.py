"""Shared fixtures: a throwaway preset cache, and two ingested concepts for training tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def lifelong_cache(tmp_path_factory) -> Path:
    """Presets are materialized into a session temp dir, never into ~/.cache."""
    cache = tmp_path_factory.mktemp("lifelong-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIFELONG_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def world_concepts(tmp_path_factory) -> Path:
    """Root with the first two DEFAULT_SEQUENCE concepts: raw in <root>/<name>, ingested at
    32 px in <root>/processed/<name>."""
    from lifelong_diffusion.ingest import ingest_concept
    from lifelong_diffusion.world import DEFAULT_SEQUENCE, concept_by_name, write_concept_folder

    root = tmp_path_factory.mktemp("world")
    for name in DEFAULT_SEQUENCE[:2]:
        folder = write_concept_folder(concept_by_name(name), root)
        ingest_concept(folder, root / "processed" / name, resolution=32, min_size=32)
    return root


@pytest.fixture(scope="session")
def tiny_start(tmp_path_factory):
    """Returns start(label): a fresh folder holding S_0 of the tiny-random preset in base/,
    where a test writes its own snapshots."""
    from lifelong_diffusion.base_model import resolve_base_model
    from lifelong_diffusion.snapshot import empty_snapshot, save_snapshot

    # Materialize the preset before any training: a cold preset cache changes the first run's
    # LoRA init (see test_train_eval.test_cold_preset_cache_does_not_change_training).
    resolve_base_model("tiny-random")

    def start(label: str) -> Path:
        out = tmp_path_factory.mktemp(label)
        save_snapshot(empty_snapshot("tiny-random"), out / "base")
        return out

    return start
