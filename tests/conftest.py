"""Shared fixtures: a throwaway preset cache, two ingested concepts for training tests, and
the tiny UNet with a random LoRA adapter and a fixed input for comparing UNet functions."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch


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


@pytest.fixture(scope="session")
def two_steps(world_concepts, tiny_start):
    """Returns run(cfg, label, evaluate=True): S_0 -> S_1 -> S_2 on the two world concepts
    with one TrainConfig in a fresh folder, and (evaluate=True) every snapshot's evaluation
    {name: scores} on two seeds; -> (folder, evaluations)."""
    from lifelong_diffusion.evaluate import EvalConfig, evaluate_snapshot
    from lifelong_diffusion.train import train_concept
    from lifelong_diffusion.world import DEFAULT_SEQUENCE, concept_by_name

    names, processed = DEFAULT_SEQUENCE[:2], world_concepts / "processed"

    def run(cfg, label: str, evaluate: bool = True):
        out = tiny_start(label)
        for prev, name in zip(["base", *names], names):
            train_concept(out / prev, processed / name, out / name, cfg, progress=False)
        if not evaluate:
            return out, {}
        words = [concept_by_name(n).class_word for n in names]
        config = EvalConfig(seeds=[0, 1], steps=2, device="cpu")
        return out, {n: evaluate_snapshot(out / n, processed, out / f"eval-{n}", config, words)
                     for n in ("base", *names)}

    return run


@pytest.fixture(scope="session")
def lora_unet():
    """Returns make(seed): the tiny-random UNet with an active "student" LoRA adapter on the
    attention projections and the resnets' convs, whose B factors (zero at init, i.e. no
    update) are drawn at random, so the adapter matters."""
    from lifelong_diffusion.backbone import Backbone
    from lifelong_diffusion.folded import lora_layers
    from lifelong_diffusion.lora import STUDENT, add_lora, lora_settings

    def make(seed: int):
        unet = Backbone.load("tiny-random", "cpu").unet
        add_lora(unet, lora_settings(4, 8.0, ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]),
                 STUDENT, None)
        unet.set_adapter(STUDENT)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in lora_layers(unet, STUDENT).values():
                layer.lora_B[STUDENT].weight.normal_(0.0, 0.1, generator=gen)
        return unet

    return make


@pytest.fixture(scope="session")
def unet_eps():
    """Returns eps(unet): its prediction on one fixed batch (two timesteps, random text)."""

    def eps(unet) -> torch.Tensor:
        gen = torch.Generator().manual_seed(1)
        c = unet.config
        x = torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=gen)
        cond = torch.randn(2, 8, c.cross_attention_dim, generator=gen)
        with torch.no_grad():
            return unet(x.to(unet.device), torch.tensor([10, 700]).to(unet.device),
                        cond.to(unet.device)).sample

    return eps


@pytest.fixture
def use_tracking_uri(monkeypatch):
    """Point MLflow at a URI for one test and restore the global URI and env after."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with contextlib.ExitStack() as stack:
        yield lambda uri: stack.enter_context(_use_tracking_uri(uri))


@pytest.fixture
def sqlite_store(tmp_path, use_tracking_uri):
    use_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path
