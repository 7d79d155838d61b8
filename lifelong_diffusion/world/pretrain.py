"""Pretrain the embedded world's base model: a tiny Stable-Diffusion pipeline on 2 CPU cores.

Three stages, each cheap because the one before froze something:
1. a small VAE (RGB -> latents at half the image size, 4 channels) trained briefly on renders;
2. the whole dataset encoded once, so the diffusion stage never runs the VAE;
3. the UNet trained from scratch under a CLIP text encoder (random and frozen, its
   outputs cached per caption, or trained jointly) with v-prediction on a
   zero-terminal-SNR schedule, min-SNR loss weights, caption dropout (for guidance)
   and an EMA copy, which is what gets saved.

The result is an ordinary diffusers `StableDiffusionPipeline` folder: loading it
needs no project code. Held-out colour x shape pairs and the personal concepts'
shape x pattern pairs never appear.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ..backbone import Conditioning, unet_forward
from ..diffusion import denoising_target, snr_weight
from ..tokenizer import build_clip_tokenizer
from .concepts import CONCEPTS
from .render import COLORS, HELDOUT_COMBOS, SHAPES, Scene, _article, base_scenes, caption, object_phrase, render


@dataclass
class PretrainConfig:
    """Every knob of the recipe; the defaults are the measured best (reports/world_pretraining.md)."""

    seed: int = 0
    # params.yaml ships 40: at 32 px thin round rims and rings were drawn lopsided (a concept
    # missed on two photo seeds of three); 40 px costs the UNet step 1.3x and a LoRA step nothing.
    image_size: int = 32
    n_images: int = 20000  # fresh renders cost ~0.3 ms each; 20k is more than the steps can visit twice
    # How far objects wander from the centre (render.sample_scene). With full spread 2,600 UNet
    # steps gave right colours but blobs: the model must learn where *and* what; a third of
    # the spread keeps the task MNIST-like. Concept photos keep the full spread.
    position_spread: float = 0.3
    # VAE: 2 blocks = one downsample, so 40x40 images become 20x20x4 latents. The 8x8x4 of a
    # 3-block VAE lost outlines (shape accuracy on its reconstructions 0.68) and cannot hold a
    # 7-pixel pattern period, which the personal concepts need later.
    vae_channels: tuple[int, ...] = (16, 32)
    latent_channels: int = 4
    vae_steps: int = 800
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    vae_object_weight: float = 4.0  # extra L1 weight on object pixels; without it colours are lost (measured)
    # Share of the VAE's images whose object is repainted with a generic two-colour texture
    # (random blotches, none of the personal patterns), so the VAE can carry any pattern.
    # Measured (reports/world_pretraining.md): a flat-paint VAE's reconstructions of concept
    # photos are read as their pattern 0.51 of the time, with half textured 0.96; on a
    # flat-paint base no LoRA learnt the striped star (pattern read 0-0.6), on this one 1.0.
    vae_texture_fraction: float = 0.5
    # Text encoder: CLIP architecture, tiny
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_mode: str = "frozen"  # "joint": trained with the UNet; "frozen": random, outputs cached per caption
    # UNet
    unet_channels: tuple[int, ...] = (32, 64, 128)
    # Cross-attention per level; none at 16x16, where attention over 256 positions would
    # triple the step time (measured 2.8 s vs 1.1 s per step of batch 64 on one core)
    unet_attention: tuple[bool, ...] = (False, True, True)
    unet_layers_per_block: int = 1
    unet_heads: int = 2  # diffusers' attention_head_dim is the head count; few wide heads are faster
    # Diffusion training
    prediction_type: str = "v_prediction"
    zero_terminal_snr: bool = True
    min_snr_gamma: float | None = 5.0
    steps: int = 3500
    max_minutes: float | None = None  # cap on the whole pretraining; the UNet stage gets what is left
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float = 0.995
    cond_dropout: float = 0.1  # empty caption this often, so classifier-free guidance works
    # "a star", "a photo of a red star": the kind of prompt identifiers and class prompts use
    partial_caption_prob: float = 0.3
    # Share of patterned objects ("a red heart with blue stripes"), never on a personal
    # concept's shape x pattern pair. With none (sessions 1-8) the base had never drawn a
    # pattern, and one LoRA step had to learn the concept's pattern from five photos while
    # keeping its outline: patterns 0.80, shape and pattern together 0.63 (12 concepts).
    pattern_fraction: float = 0.0
    log_every: int = 100
    save_every: int | None = None  # also write the EMA pipeline every N UNet steps (inspect a long run early)


# ---------------------------------------------------------------- building the components


def build_vae(cfg: PretrainConfig) -> AutoencoderKL:
    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        sample_size=cfg.image_size, block_out_channels=cfg.vae_channels, layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, mid_block_add_attention=False,
    )


def build_text_encoder(cfg: PretrainConfig, tokenizer) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def build_unet(cfg: PretrainConfig) -> UNet2DConditionModel:
    """SD's UNet, narrowed; cross-attention only on the levels `unet_attention` marks."""
    if len(cfg.unet_attention) != len(cfg.unet_channels):
        raise ValueError("unet_attention needs one flag per entry of unet_channels")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.unet_attention))
    return UNet2DConditionModel(
        sample_size=cfg.image_size // 2 ** (len(cfg.vae_channels) - 1),
        in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        layers_per_block=cfg.unet_layers_per_block, block_out_channels=cfg.unet_channels,
        norm_num_groups=8, cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.unet_heads,
        down_block_types=down, up_block_types=up,
    )


def build_scheduler(cfg: PretrainConfig) -> DDPMScheduler:
    """SD's beta schedule, rescaled to zero terminal SNR: at 8x8 the SD schedule's last step
    still leaks the mean colour, so sampling from pure noise would start off-distribution.
    Trailing spacing makes DDIM's first step the pure-noise one it was trained on."""
    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
        beta_end=0.012, prediction_type=cfg.prediction_type, clip_sample=False, steps_offset=1,
        rescale_betas_zero_snr=cfg.zero_terminal_snr,
        timestep_spacing="trailing" if cfg.zero_terminal_snr else "leading",
    )


# ---------------------------------------------------------------- data


def to_pixels(images) -> torch.Tensor:
    """PIL images as a (N, 3, H, W) tensor in [-1, 1], the VAE's input range."""
    arrays = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1


def partial_caption(rng: np.random.Generator, scene: Scene) -> str:
    """A shorter description of the same scene ("a star", "a photo of a red star", ...).

    Downstream prompts name only the class word ("a photo of a star"); without these
    the base would never have seen a caption that leaves colour or background open.
    A pattern is always named, so a caption without one keeps meaning a plain object,
    as the class prompts' "still plain" figure assumes.
    """
    color = scene.color if rng.random() < 0.5 else None
    obj = object_phrase(scene.shape, color, scene.pattern, scene.pattern_color)
    if rng.random() < 0.5:
        obj = f"{obj} on {_article(scene.background)} {scene.background} background"
    return f"a photo of {obj}" if rng.random() < 0.5 else obj


def caption_batch(scenes: list[Scene], rng: np.random.Generator, cfg: PretrainConfig) -> list[str]:
    """Training text for one batch: mostly the full caption, some partial, some empty."""
    out = []
    for scene in scenes:
        u = rng.random()
        if u < cfg.cond_dropout:
            out.append("")
        elif u < cfg.cond_dropout + cfg.partial_caption_prob:
            out.append(partial_caption(rng, scene))
        else:
            out.append(caption(scene))
    return out


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


# ---------------------------------------------------------------- stage 1: VAE


def object_mask(pixels: torch.Tensor) -> torch.Tensor:
    """1 where a pixel differs from the background, taken as the median of the four corners
    (objects never reach a corner: sample_scene keeps them inside the frame)."""
    corners = pixels[:, :, [0, 0, -1, -1], [0, -1, 0, -1]].median(-1).values[..., None, None]
    return ((pixels - corners).abs().amax(1, keepdim=True) > 0.1).float()


def vae_step(vae: AutoencoderKL, opt: torch.optim.Optimizer, x: torch.Tensor, weight: torch.Tensor,
             kl_weight: float) -> float:
    """Weighted L1 reconstruction plus SD's tiny KL, just enough to keep latents bounded.

    Objects cover a fifth of the pixels, so a plain L1 is first minimised by the
    background; in a few hundred steps that gave pink blobs for every colour. Weighting
    object pixels up makes the object's colour and outline what the VAE learns first.

    The decoder sees the posterior mean: in a few hundred steps the encoder cannot shrink
    its initial unit variance, and decoding samples then teaches the decoder to blur
    (measured: pale, smeared shapes). Everything downstream uses the mean anyway.
    """
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.mean).sample
    loss = ((recon - x).abs() * weight).mean() / weight.mean() + kl_weight * posterior.kl().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, H, W) noise, one sigma (pixels) per image."""
    offsets = torch.arange(-6, 7, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True))[:, None, None, :]  # (N, 1, 1, 13), horizontal
    y = x.transpose(0, 1)  # images as channels, so each gets its own kernel (groups=N)
    y = F.conv2d(F.pad(y, (6, 6, 0, 0), mode="circular"), kernel, groups=len(x))
    y = F.conv2d(F.pad(y, (0, 0, 6, 6), mode="circular"), kernel.transpose(2, 3), groups=len(x))
    return y.transpose(0, 1)


def generic_textures(pixels: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """A copy of `pixels` (in [-1, 1]) whose first `fraction` of objects are repainted with
    thresholded blurred noise in two base colours: blotches at random scales, irregular by
    construction, so the VAE learns to carry fine two-colour detail without ever seeing a
    stripe, dot, check or ring."""
    out = pixels.clone()
    n = int(fraction * len(pixels))
    if n == 0:
        return out
    size = pixels.shape[-1]
    field = _blur(torch.randn((n, 1, size, size), generator=gen), 0.7 + 2.3 * torch.rand(n, generator=gen))
    on = field > field.flatten(1).median(1).values[:, None, None, None]
    palette = torch.tensor(list(COLORS.values()), dtype=pixels.dtype) / 127.5 - 1
    pairs = torch.stack([torch.randperm(len(palette), generator=gen)[:2] for _ in range(n)])
    paint = torch.where(on, palette[pairs[:, 0]][..., None, None], palette[pairs[:, 1]][..., None, None])
    out[:n] = torch.where(object_mask(pixels[:n]) > 0, paint, pixels[:n])
    return out


def train_vae(cfg: PretrainConfig, pixels: torch.Tensor, gen: torch.Generator,
              log) -> tuple[AutoencoderKL, float]:
    """Short one-cycle run on whole images: flat-coloured shapes are easy to reconstruct, so minutes suffice.

    (Crops would be 4x cheaper, but GroupNorm statistics span the whole image, so a VAE
    trained on crops gets background colours wrong on full frames.)
    """
    vae = build_vae(cfg)
    pixels = generic_textures(pixels, cfg.vae_texture_fraction, gen)
    weights = 1 + cfg.vae_object_weight * object_mask(pixels)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.vae_lr, total_steps=cfg.vae_steps)
    loss = float("nan")
    for step in range(cfg.vae_steps):
        pick = torch.randint(0, len(pixels), (cfg.vae_batch,), generator=gen)
        loss = vae_step(vae, opt, pixels[pick], weights[pick], cfg.vae_kl_weight)
        sched.step()
        if step % cfg.log_every == 0:
            log(f"vae step {step} l1+kl {loss:.4f}")
    return vae.eval().requires_grad_(False), loss


@torch.no_grad()
def encode_dataset(vae: AutoencoderKL, pixels: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    """Posterior mean of every image, computed once, so the diffusion stage never runs the VAE."""
    return torch.cat([vae.encode(pixels[i:i + chunk]).latent_dist.mean for i in range(0, len(pixels), chunk)])


@torch.no_grad()
def vae_reconstruction_error(vae: AutoencoderKL, pixels: torch.Tensor) -> float:
    """Mean absolute error in [0, 255] units, from the posterior mean as sampling uses."""
    recon = vae.decode(vae.encode(pixels).latent_dist.mean).sample.clamp(-1, 1)
    return float((recon - pixels).abs().mean() * 127.5)


# ---------------------------------------------------------------- stage 3: UNet + text encoder


class TextConditioner:
    """Caption strings -> cross-attention states, for both text-encoder treatments.

    "joint": the encoder trains with the UNet, except its 49k-row token table, whose
    dense AdamW update would cost as much as the UNet's while ~30 rows are ever used.
    "frozen": a random encoder is a fixed, distinct code per caption; the base world has
    only ~1k distinct captions, so each is encoded once and looked up afterwards.
    """

    def __init__(self, text_encoder: CLIPTextModel, tokenizer, mode: str) -> None:
        if mode not in ("joint", "frozen"):
            raise ValueError(f"text_mode must be 'joint' or 'frozen', got {mode!r}")
        self.text_encoder, self.tokenizer, self.mode = text_encoder, tokenizer, mode
        self.cache: dict[str, torch.Tensor] = {}
        text_encoder.requires_grad_(mode == "joint")
        text_encoder.get_input_embeddings().requires_grad_(False)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.text_encoder.parameters() if p.requires_grad]

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if self.mode == "joint":
            return self.text_encoder(tokenize(self.tokenizer, texts))[0]
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            with torch.no_grad():
                states = self.text_encoder(tokenize(self.tokenizer, missing))[0]
            self.cache.update(zip(missing, states))
        return torch.stack([self.cache[t] for t in texts])


def diffusion_step(unet, text: TextConditioner, scheduler, opt, x0: torch.Tensor, texts: list[str],
                   gen: torch.Generator, gamma: float | None) -> float:
    """One step; a jointly trained text encoder gets gradients through cross-attention only."""
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=gen)
    pred = unet_forward(unet, scheduler.add_noise(x0, noise, t), t, Conditioning(text(texts)))
    per_sample = F.mse_loss(pred, denoising_target(scheduler, x0, noise, t), reduction="none").mean((1, 2, 3))
    loss = (per_sample * snr_weight(scheduler, t, gamma)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()
    return loss.item()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        if p.requires_grad:
            e.lerp_(p, 1 - decay)


def lr_factor(step: int, progress: float, warmup: int) -> float:
    """Linear warmup, then cosine decay over `progress` (steps or wall clock, whichever is further)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_diffusion(cfg: PretrainConfig, latents: torch.Tensor, scenes: list[Scene],
                    tokenizer, gen: torch.Generator, rng: np.random.Generator, log,
                    budget: float = math.inf, checkpoint=None):
    """Train UNet + text encoder for `cfg.steps` or `budget` seconds; returns their EMA copies and stats.

    The lr schedule follows whichever of the two is further along, so a time-capped run
    still ends on a decayed lr instead of being cut off at full lr.
    """
    unet, text_encoder, scheduler = build_unet(cfg), build_text_encoder(cfg, tokenizer), build_scheduler(cfg)
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).requires_grad_(False)
    text = TextConditioner(text_encoder, tokenizer, cfg.text_mode)
    opt = torch.optim.AdamW(list(unet.parameters()) + text.parameters(), lr=cfg.lr, weight_decay=0.0)
    start, losses, step = time.perf_counter(), [], 0
    while step < cfg.steps and time.perf_counter() - start < budget:
        progress = max(step / cfg.steps, (time.perf_counter() - start) / budget)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, progress, cfg.warmup_steps)
        pick = torch.randint(0, len(latents), (cfg.batch_size,), generator=gen)
        x0 = latents[pick]
        texts = caption_batch([scenes[i] for i in pick.tolist()], rng, cfg)
        losses.append(diffusion_step(unet, text, scheduler, opt, x0, texts, gen, cfg.min_snr_gamma))
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # warm-up so early EMA is not the random init
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text_encoder, decay)
        if step % cfg.log_every == 0:
            log(f"unet step {step} loss {np.mean(losses[-cfg.log_every:]):.4f} "
                f"{(time.perf_counter() - start) / (step + 1):.3f} s/step")
        step += 1
        if checkpoint and cfg.save_every and step % cfg.save_every == 0:
            checkpoint(ema_unet, ema_text, scheduler)
    seconds = time.perf_counter() - start
    stats = {"unet_steps": step, "unet_seconds": seconds, "s_per_step": seconds / max(step, 1),
             "final_loss": float(np.mean(losses[-100:]))}
    return ema_unet.eval(), ema_text.eval(), scheduler, stats


# ---------------------------------------------------------------- the whole recipe


# What keeps the concepts personal: the base never draws a star with stripes or a heart with dots.
CONCEPT_PATTERNS = frozenset((spec.shape, spec.pattern) for spec in CONCEPTS)


def seen_prompts() -> list[tuple[str, str]]:
    """(color, shape) pairs the base is trained on."""
    return [(c, s) for s in SHAPES for c in COLORS if (c, s) not in HELDOUT_COMBOS]


def pretrain_world_model(cfg: PretrainConfig, out_dir, log=print) -> dict:
    """Train VAE, then UNet + text encoder, and save a plain StableDiffusionPipeline folder.

    `log` receives progress lines (None: silent)."""
    log = log or (lambda *_: None)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 1])
    t0 = time.perf_counter()
    scenes = base_scenes(cfg.n_images, cfg.seed, spread=cfg.position_spread,
                         pattern_fraction=cfg.pattern_fraction, excluded_patterns=CONCEPT_PATTERNS)
    pixels = to_pixels([render(scene, cfg.image_size) for scene in scenes])
    t_data = time.perf_counter()
    vae, vae_loss = train_vae(cfg, pixels, gen, log)
    latents = encode_dataset(vae, pixels)
    scale = float(1 / latents.std())  # unit-variance latents, as SD's scaling_factor does
    vae.register_to_config(scaling_factor=scale)
    t_vae = time.perf_counter()
    log(f"vae done in {t_vae - t_data:.0f}s, scaling_factor {scale:.3f}")
    tokenizer = build_clip_tokenizer()
    budget = cfg.max_minutes * 60 - (time.perf_counter() - t0) if cfg.max_minutes else math.inf

    def save(unet, text_encoder, scheduler) -> None:
        StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        ).save_pretrained(out_dir)

    unet, text_encoder, scheduler, stats = train_diffusion(cfg, latents * scale, scenes,
                                                           tokenizer, gen, rng, log, budget, save)
    save(unet, text_encoder, scheduler)
    return {
        "config": asdict(cfg),
        "data_seconds": t_data - t0,
        "vae_seconds": t_vae - t_data,
        "vae_final_loss": vae_loss,
        "vae_mae_255": vae_reconstruction_error(vae, pixels[:500]),
        "pretrain_seconds": time.perf_counter() - t0,
        **stats,
    }
