"""Built presets: tiny-sdxl is a working SDXL pipeline folder, sd15 has SD-1.5's architecture
(checked on the meta device: building and saving it takes a minute and 2 GB)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong_diffusion.presets import (BUILT_PRESETS, PRESETS, build_tiny_sdxl,
                                        materialize_preset, sd15_configs)
from lifelong_diffusion.tokenizer import build_clip_tokenizer


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory) -> Path:
    return materialize_preset("tiny-sdxl", tmp_path_factory.mktemp("presets") / "tiny-sdxl")


def test_presets_are_registered():
    assert {"tiny-sdxl", "sd15"} <= set(BUILT_PRESETS)
    assert PRESETS == ("tiny-random", "tiny-sdxl", "sd15", "world")


def test_tiny_sdxl_loads_with_plain_diffusers(sdxl_folder):
    from diffusers import StableDiffusionXLPipeline

    assert json.loads((sdxl_folder / "model_index.json").read_text())["_class_name"] == \
        "StableDiffusionXLPipeline"
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.addition_embed_type == "text_time"
    # guidance > 1 runs the zeroed negative embeddings (force_zeros_for_empty_prompt) too
    images = pipe("a photo of a red star", height=32, width=32, num_inference_steps=2,
                  guidance_scale=5.0, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (1, 32, 32, 3)
    assert np.isfinite(images).all()


def test_tiny_sdxl_is_deterministic_and_leaves_rng_alone():
    state = torch.random.get_rng_state()
    a, b = build_tiny_sdxl(), build_tiny_sdxl()
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_sd15_has_sd15_architecture():
    """Parameter counts of runwayml/stable-diffusion-v1-5's UNet, text encoder and VAE."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    cfg = sd15_configs(build_clip_tokenizer())
    with torch.device("meta"):  # shapes only: no memory, no random init
        unet = UNet2DConditionModel(**cfg["unet"])
        text_encoder = CLIPTextModel(cfg["text_encoder"])
        vae = AutoencoderKL(**cfg["vae"])
    assert _n_params(unet) == 859_520_964
    assert _n_params(text_encoder) == 123_060_480
    assert _n_params(vae) == 83_653_863
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
