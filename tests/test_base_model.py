"""Base models: the tiny preset is a plain diffusers folder; bad specs fail fast and clearly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong_diffusion.base_model import BaseModelError, pick_device, preset_cache_dir, resolve_base_model


@pytest.fixture(scope="module")
def tiny_folder() -> Path:
    return resolve_base_model("tiny-random")


def test_preset_lives_in_lifelong_cache(tiny_folder, lifelong_cache):
    assert preset_cache_dir() == Path(os.environ["LIFELONG_CACHE"]) / "presets"
    assert tiny_folder == lifelong_cache / "presets" / "tiny-random"
    assert (tiny_folder / "model_index.json").exists()
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_folder / sub).is_dir(), sub


def test_preset_is_materialized_once(tiny_folder):
    stamp = (tiny_folder / "model_index.json").stat().st_mtime_ns
    assert resolve_base_model("tiny-random") == tiny_folder
    assert (tiny_folder / "model_index.json").stat().st_mtime_ns == stamp
    assert not [p for p in tiny_folder.parent.iterdir() if p.name.startswith(".")]


def test_preset_loads_with_plain_diffusers(tiny_folder):
    """No project code: anything that reads SD-1.5 folders reads the preset."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder)
    pipe.set_progress_bar_config(disable=True)
    assert len(pipe.tokenizer) == 49408
    assert pipe.tokenizer("a photo of a red star").input_ids == [
        49406, 320, 1125, 539, 320, 736, 1565, 49407]
    out = pipe("a photo of a red star", num_inference_steps=2, guidance_scale=1.0,
               generator=torch.Generator().manual_seed(0), output_type="np")
    images = out.images
    assert images.shape == (1, 32, 32, 3)
    assert np.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_preset_is_deterministic(tiny_folder, tmp_path):
    """Rebuilding the preset gives the same weights (seeded)."""
    from safetensors.torch import load_file

    from lifelong_diffusion.presets import materialize_preset

    other = materialize_preset("tiny-random", tmp_path / "again")
    a = load_file(tiny_folder / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(other / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_hub_id_fails_fast(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # so "someone/not-a-model" is not a folder by accident
    started = time.perf_counter()
    with pytest.raises(BaseModelError) as info:
        resolve_base_model("someone/not-a-model")
    assert time.perf_counter() - started < 10
    msg = str(info.value)
    assert "'someone/not-a-model'" in msg
    assert "local" in msg
    assert "folder" in msg
    assert "params.yaml" in msg
    assert "tiny-random" in msg  # lists the presets


def test_folder_without_model_index(tmp_path):
    folder = tmp_path / "not-a-pipeline"
    folder.mkdir()
    (folder / "unet").mkdir()
    with pytest.raises(BaseModelError) as info:
        resolve_base_model(str(folder))
    msg = str(info.value)
    assert str(folder) in msg
    assert "model_index.json" in msg


def test_pick_device():
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_world_preset_is_the_shipped_folder():
    from lifelong_diffusion.presets import WORLD_DIR

    assert resolve_base_model("world") == WORLD_DIR / "base"


def test_missing_world_preset_says_how_to_restore_it(monkeypatch, tmp_path):
    monkeypatch.setattr("lifelong_diffusion.presets.WORLD_DIR", tmp_path / "world")
    with pytest.raises(BaseModelError) as info:
        resolve_base_model("world")
    msg = str(info.value)
    assert str(tmp_path / "world" / "base") in msg
    assert "git checkout -- models/world" in msg and "lifelong pretrain" in msg
