"""What a larger world would cost: the UNet's work at image sizes other than 32 px.

    python -m benchmarks.world_size                    # 32, 40 and 48 px (about 5 min)
    python -m benchmarks.world_size --sizes 32,48 --rounds 2

The world's round-shape misses (reports/world_pretraining.md) point to a larger image. This
times the three loops that make up almost all of `lifelong pretrain` and `make run`, at each
size, on the same cores, interleaved (each round runs every size; medians over rounds):
- `pretrain_step_s`: one pretraining UNet step, batch 64, a fresh UNet of params.yaml's
  `pretrain` shape (forward, backward, AdamW);
- `lora_step_s`: one training step of a concept, batch 4, the shipped base with a LoRA of
  params.yaml's `train` settings (only the adapter learns);
- `sample_s`: 16 samples of one prompt, params.yaml's DDIM steps with guidance (what
  evaluation does per prompt).
Data and text states are random: cost depends on shapes, not values. Ends with one JSON line:
per size the three figures, and `ratio` (each against the first size).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
import yaml

from lifelong_diffusion.backbone import Backbone, unet_forward
from lifelong_diffusion.lora import STUDENT, adapter_parameters, add_lora, lora_settings
from lifelong_diffusion.world.build import WorldBuildConfig
from lifelong_diffusion.world.pretrain import build_unet


def timed(fn, repeats: int) -> float:
    """Seconds per call, after one untimed call (allocations, lazy inits)."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def descent(opt, loss_fn):
    """One optimizer step on loss_fn(), as a call to time."""
    def step():
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def pretrain_step(size: int, states: torch.Tensor, pretrain: dict):
    cfg = replace(WorldBuildConfig.from_params(pretrain).base, image_size=size)
    unet = build_unet(cfg)
    latent = unet.config.sample_size
    x = torch.randn(cfg.batch_size, cfg.latent_channels, latent, latent)
    t = torch.randint(0, 1000, (cfg.batch_size,))
    cond = states[:1].expand(cfg.batch_size, -1, -1)
    return descent(torch.optim.AdamW(unet.parameters(), lr=cfg.lr),
                   lambda: F.mse_loss(unet(x, t, encoder_hidden_states=cond).sample, x))


def lora_step(backbone: Backbone, size: int, train: dict):
    unet = backbone.unet
    latent = size // backbone.pipe.vae_scale_factor
    x = torch.randn(train["batch_size"], unet.config.in_channels, latent, latent)
    t = torch.randint(0, 1000, (len(x),))
    cond = backbone.encode(["a photo of a star"] * len(x))
    return descent(torch.optim.AdamW(adapter_parameters(unet, STUDENT), lr=train["lr"]),
                   lambda: F.mse_loss(unet_forward(unet, x, t, cond), x))


def sampling(backbone: Backbone, size: int, evaluate: dict):
    from lifelong_diffusion.diffusion import sample_latents

    cond = backbone.encode(["a photo of a star"]).expand(len(evaluate["seeds"]))
    latent = size // backbone.pipe.vae_scale_factor
    shape = (backbone.unet.config.in_channels, latent, latent)

    def run():
        with torch.no_grad():
            sample_latents(backbone.predict, backbone.scheduler, cond, backbone.unconditional(),
                           shape, evaluate["steps"], evaluate["guidance_scale"], torch.Generator().manual_seed(0))
    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="32,40,48", help="image sizes in px, each a multiple of 8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per loop and round")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    params = yaml.safe_load(open("params.yaml"))
    torch.manual_seed(0)
    backbone = Backbone.load("world")
    train = params["train"]
    add_lora(backbone.unet, lora_settings(train["lora_rank"], train["lora_alpha"], train["lora_targets"]),
             STUDENT, None)
    backbone.unet.set_adapter(STUDENT)  # peft: makes the adapter trainable
    states = backbone.encode([""]).states
    loops = {size: {"pretrain_step_s": pretrain_step(size, states, params["pretrain"]),
                    "lora_step_s": lora_step(backbone, size, train),
                    "sample_s": sampling(backbone, size, params["evaluate"])} for size in sizes}
    times = {size: {name: [] for name in loops[size]} for size in sizes}
    for r in range(args.rounds):
        for size in (sizes if r % 2 == 0 else sizes[::-1]):  # a slow spell hits every size alike
            for name, fn in loops[size].items():
                times[size][name].append(timed(fn, args.repeats))
            print(f"round {r + 1}, {size} px: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in times[size].items()),
                  flush=True)
    figures = {f"{size}px": {k: round(statistics.median(v), 4) for k, v in times[size].items()} for size in sizes}
    first = figures[f"{sizes[0]}px"]
    result = {**figures,
              "ratio": {f"{size}px": {k: round(figures[f"{size}px"][k] / first[k], 2) for k in first} for size in sizes},
              "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
