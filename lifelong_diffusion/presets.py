"""Built-in base models ("presets"): tiny Stable-Diffusion-architecture pipelines built offline.

A preset is just a recipe that writes an ordinary diffusers `StableDiffusionPipeline` folder;
everything downstream loads that folder exactly as it would load SD-1.5, so no algorithm
ever special-cases a preset.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .fileio import atomic_dir
from .tokenizer import build_clip_tokenizer


def build_tiny_random(seed: int = 0) -> StableDiffusionPipeline:
    """Random weights, 32x32 images, 16x16x4 latents: the fastest model for unit tests."""
    with torch.random.fork_rng():  # building must not change the caller's random stream
        torch.manual_seed(seed)
        return _tiny_random_pipeline()


def _tiny_random_pipeline() -> StableDiffusionPipeline:
    tokenizer = build_clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear",
        beta_start=0.00085, beta_end=0.012, prediction_type="epsilon", clip_sample=False, steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


# The embedded world's pretrained models ship with the repository (written by `lifelong pretrain`).
WORLD_DIR = Path(__file__).resolve().parents[1] / "models" / "world"


class PresetMissingError(FileNotFoundError):
    """A shipped preset's files are not where they should be."""


def world_base_dir() -> Path:
    folder = WORLD_DIR / "base"
    if not (folder / "model_index.json").exists():
        raise PresetMissingError(
            f"the 'world' preset's pipeline {folder} is missing; restore it from git "
            "(`git checkout -- models/world`) or re-create it with `lifelong pretrain` (about an hour)")
    return folder


BUILT_PRESETS = {"tiny-random": build_tiny_random}  # built on first use into the cache
SHIPPED_PRESETS = {"world": world_base_dir}  # folders in the repository
PRESETS = (*BUILT_PRESETS, *SHIPPED_PRESETS)


def materialize_preset(name: str, folder: Path) -> Path:
    """The diffusers folder of preset `name`: a shipped one as is, a built one written to `folder` once."""
    if name in SHIPPED_PRESETS:
        return SHIPPED_PRESETS[name]()
    if (folder / "model_index.json").exists():
        return folder
    with atomic_dir(folder) as tmp:
        BUILT_PRESETS[name]().save_pretrained(tmp)
    return folder
