"""Built-in base models ("presets"): Stable-Diffusion-architecture pipelines built offline.

A preset is just a recipe that writes an ordinary diffusers pipeline folder (SD or SDXL);
everything downstream loads that folder exactly as it would load SD-1.5 or SDXL, so no
algorithm ever special-cases a preset. All built presets have random weights: no machine
here can download real ones.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (AutoencoderKL, DDPMScheduler, PNDMScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .fileio import atomic_dir
from .tokenizer import build_clip_tokenizer

# The noise schedule SD-1.x and SDXL were trained with.
SD_BETAS = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                beta_end=0.012, prediction_type="epsilon", steps_offset=1)
# The tiny presets' text towers: hidden size 32, two layers.
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def _clip_text_config(tokenizer: CLIPTokenizer, **arch) -> CLIPTextConfig:
    """A CLIP text tower over our tokenizer's vocabulary, context and special ids."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **arch,
    )


def _tiny_vae(**extra) -> AutoencoderKL:
    """Two blocks, so a latent pixel is 2x2 image pixels: 16x16 latents decode to 32x32 images."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        **extra,
    )


def build_tiny_random(seed: int = 0) -> StableDiffusionPipeline:
    """Random weights, 32x32 images, 16x16x4 latents: the fastest model for unit tests."""
    with torch.random.fork_rng():  # building must not change the caller's random stream
        torch.manual_seed(seed)
        return _tiny_random_pipeline()


def _tiny_random_pipeline() -> StableDiffusionPipeline:
    tokenizer = build_clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer, **TINY_CLIP))
    vae = _tiny_vae()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDPMScheduler(**SD_BETAS, clip_sample=False), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def build_tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL's architecture in miniature, random weights, 32x32 images: for testing SDXL paths."""
    with torch.random.fork_rng():  # building must not change the caller's random stream
        torch.manual_seed(seed)
        return _tiny_sdxl_pipeline()


def _tiny_sdxl_pipeline() -> StableDiffusionXLPipeline:
    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_clip_tokenizer()  # two, as SDXL ships
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer, **TINY_CLIP))
    # SDXL's second tower (OpenCLIP bigG: gelu, projected) also gives the pooled text embedding.
    text_encoder_2 = CLIPTextModelWithProjection(
        _clip_text_config(tokenizer_2, hidden_act="gelu", projection_dim=32, **TINY_CLIP))
    unet = UNet2DConditionModel(
        # SDXL's layout shrunk: no attention at the highest resolution, more transformer
        # layers per block deeper down, linear projections in and out of the transformers.
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64), norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), use_linear_projection=True,
        # Cross-attention reads both towers' hidden states, concatenated per token.
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        # "text_time": the time embedding also gets the pooled text embedding and the six
        # micro-conditioning numbers (original size, crop corner, target size), 8 dims each.
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + text_encoder_2.config.projection_dim,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(scaling_factor=0.13025),  # SDXL VAE's latent scale
        text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
        # DDPM rather than SDXL's Euler: our methods noise with add_noise in DDPM's
        # sqrt(alpha_bar) form; Euler's is x + sigma * noise. Same betas and spacing.
        scheduler=DDPMScheduler(**SD_BETAS, clip_sample=False, timestep_spacing="leading"),
        # As SDXL base: no negative prompt gives all-zero negative embeddings, not those of "".
        force_zeros_for_empty_prompt=True,
    )


def sd15_configs(tokenizer: CLIPTokenizer) -> dict:
    """The component configs of runwayml/stable-diffusion-v1-5 (its text tower is
    openai/clip-vit-large-patch14's), apart from building so a test can check the
    architecture on the meta device. Values equal to the library defaults are spelled out
    all the same: they are SD-1.5's, whatever the defaults become."""
    return {
        "unet": dict(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), norm_num_groups=32,
            cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
            block_out_channels=(128, 256, 512, 512), norm_num_groups=32,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        ),
        "text_encoder": _clip_text_config(
            tokenizer, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768),
        # SD-1.5 ships PNDM; its add_noise and alphas_cumprod are DDPM's, as our methods need.
        "scheduler": dict(**SD_BETAS, set_alpha_to_one=False, skip_prk_steps=True),
    }


def build_sd15(seed: int = 0) -> StableDiffusionPipeline:
    """SD-1.5's architecture with random weights, returned in float16: what gets saved, so
    the folder is 2.1 GB instead of 4.3 GB. Load it with dtype=torch.float32 (or torch_dtype,
    deprecated in diffusers 0.42) to compute in full precision: float16 widens to float32
    exactly. Without it the text encoder stays float16 (transformers 5 loads a checkpoint in
    its own dtype) while diffusers' models load as float32."""
    tokenizer = build_clip_tokenizer()
    cfg = sd15_configs(tokenizer)
    with torch.random.fork_rng():  # building must not change the caller's random stream
        torch.manual_seed(seed)
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL(**cfg["vae"]), text_encoder=CLIPTextModel(cfg["text_encoder"]),
            tokenizer=tokenizer, unet=UNet2DConditionModel(**cfg["unet"]),
            scheduler=PNDMScheduler(**cfg["scheduler"]), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )
    # Module by module: diffusers 0.42's pipe.to(float16) logs a spurious float32 warning.
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.half()
    return pipe


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


# Built on first use into the cache.
BUILT_PRESETS = {"tiny-random": build_tiny_random, "tiny-sdxl": build_tiny_sdxl, "sd15": build_sd15}
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
