"""Where is a concept's shape lost? Measurements on one world folder, cheapest first.

    python -m benchmarks.world_diagnosis                       # the shipped models/world
    python -m benchmarks.world_diagnosis --world /tmp/w --lora striped-star,dotted-heart

1. placement: object centre offset and size of the concept photos against the base's data;
2. evaluator ceiling: the attribute classifier on the concept photos themselves;
3. VAE ceiling: the classifier on the VAE's reconstructions of the concept photos (both also
   per concept, shape read: --photo-seed N checks another seed's photos);
4. base prompts: shape read on "a photo of a <shape>" (what an identifier prompt builds on)
   against the full caption "a <colour> <shape> on a <bg> background";
5. text binding: cosine similarity of the frozen text encoder's states for two class prompts
   (how different "a photo of a star" and "a photo of a heart" look to the UNet);
6. evaluator under blur: the classifier's shape read on patterned renders of each shape,
   crisp, blurred by one and two 3x3 box passes, and through the base VAE (samples are
   softer than crisp renders; a reader that loses the outline there blames the model);
7. LoRA variants (--lora): one concept learnt with params.yaml's `train` plus overrides.

The last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, StableDiffusionPipeline

from benchmarks.world import concept_after_lora
from lifelong_diffusion.presets import WORLD_DIR
from lifelong_diffusion.backbone import Backbone
from lifelong_diffusion.train import encode_latents
from lifelong_diffusion.world import CONCEPTS, COLORS, SHAPES, attributes, render_concept_images
from lifelong_diffusion.world.concepts import PHOTO_SPREAD, concept_scenes
from lifelong_diffusion.world.pretrain import PretrainConfig
from lifelong_diffusion.world.render import BACKGROUNDS, PATTERNS, Scene, caption, render, sample_scene


def placement(photo_seed: int, base_spread: float) -> dict:
    """Mean |centre - 0.5| and size of the concept photos and of base training scenes."""
    def stats(scenes) -> dict:
        off = [max(abs(s.cx - 0.5), abs(s.cy - 0.5)) for s in scenes]
        return {"offset_mean": float(np.mean(off)), "offset_max": float(np.max(off)),
                "size_mean": float(np.mean([s.size for s in scenes]))}
    rng = np.random.default_rng(0)
    base = [sample_scene(rng, spread=base_spread) for _ in range(2000)]
    photos = [s for spec in CONCEPTS for s in concept_scenes(spec, 5, photo_seed)]
    return {"base": stats(base), "concept_photos": stats(photos)}


def read(classifier, images, truth: list[Scene]) -> dict:
    preds = attributes.predict(classifier, images)
    return {k: sum(p[k] == getattr(s, k) for p, s in zip(preds, truth)) / len(truth)
            for k in ("shape", "color", "pattern")}


@torch.no_grad()
def vae_ceiling(pipe, classifier, photo_seed: int) -> dict:
    """The classifier on the concept photos and on their VAE reconstructions, over all concepts
    and per concept (shape read): what a concept's samples could score at best."""
    scenes = [s for spec in CONCEPTS for s in concept_scenes(spec, 5, photo_seed)]
    photos = [im for spec in CONCEPTS for im in render_concept_images(spec, 5, photo_seed, size=32)]
    latents = encode_latents(Backbone(pipe), photos) / pipe.vae.config.scaling_factor
    recon = (pipe.vae.decode(latents).sample.clamp(-1, 1) + 1) / 2
    by_concept = {}
    for k, spec in enumerate(CONCEPTS):
        part = slice(5 * k, 5 * (k + 1))  # the concept's 5 photos
        by_concept[spec.name] = {name: read(classifier, images[part], scenes[part])["shape"]
                                 for name, images in (("photos", photos), ("reconstructions", recon))}
    return {"photos": read(classifier, photos, scenes), "reconstructions": read(classifier, recon, scenes),
            "shape_by_concept": by_concept}


@torch.no_grad()
def base_prompts(pipe, classifier, n_seeds: int) -> dict:
    """Shape read per prompt kind, 8 shapes x n_seeds; the full caption cycles colours."""
    out = {}
    colours, backgrounds = list(COLORS), list(BACKGROUNDS)
    kinds = {
        "class_prompt": lambda shape, i: f"a photo of a {shape}",
        "bare_shape": lambda shape, i: f"a {shape}",
        "full_caption": lambda shape, i: caption(Scene(shape, colours[i % 8], backgrounds[i % 4])),
    }
    for kind, prompt in kinds.items():
        hits = []
        for shape in SHAPES:
            texts = [prompt(shape, i) for i in range(n_seeds)]
            images = pipe(texts, num_inference_steps=20, guidance_scale=5.0,
                          generator=[torch.Generator().manual_seed(i) for i in range(n_seeds)]).images
            hits += [p["shape"] == shape for p in attributes.predict(classifier, images)]
        out[kind] = sum(hits) / len(hits)
    return out


@torch.no_grad()
def text_binding(pipe) -> dict:
    """Mean cosine similarity of the text states between prompts that differ in one word."""
    def states(texts):
        return Backbone(pipe).encode(texts).states.flatten(1)
    cls = torch.nn.functional.normalize(states([f"a photo of a {s}" for s in SHAPES]), dim=-1)
    full = torch.nn.functional.normalize(states([f"a red {s} on a gray background" for s in SHAPES]), dim=-1)
    off_diag = ~torch.eye(len(SHAPES), dtype=torch.bool)
    return {"class_prompts_cosine": float((cls @ cls.T)[off_diag].mean()),
            "full_captions_cosine": float((full @ full.T)[off_diag].mean())}


@torch.no_grad()
def shape_under_blur(pipe, classifier, n: int = 100) -> dict:
    """Per shape, the share of patterned renders (n per pattern) whose shape is read right,
    crisp, after one and two 3x3 box-blur passes, and through the base VAE."""
    def box(x):
        return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    rng, out = np.random.default_rng(3), {}
    for shape in SHAPES:
        scenes = [sample_scene(rng, shape=shape, pattern=p, spread=PHOTO_SPREAD, include_heldout=True)
                  for p in PATTERNS for _ in range(n)]
        x = attributes.to_tensor([render(s, 32) for s in scenes])
        views = {"crisp": x, "blur1": box(x), "blur2": box(box(x)),
                 "vae": attributes.vae_roundtrip(pipe.vae, x)}
        out[shape] = {name: read(classifier, v, scenes)["shape"] for name, v in views.items()}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default=str(WORLD_DIR))
    parser.add_argument("--photo-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=8, help="samples per prompt for the base prompts")
    parser.add_argument("--lora", default="", help="comma-separated concepts for the LoRA variants")
    parser.add_argument("--variants", default='{"default": {}}',
                        help="JSON object: variant name -> params.yaml `train` overrides "
                             "(and photo_spread: the concept photos' placement spread)")
    args = parser.parse_args(argv)
    world = Path(args.world)
    pipe = StableDiffusionPipeline.from_pretrained(world / "base")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    classifier = attributes.load(world / "attributes.safetensors")
    result = {"placement": placement(args.photo_seed, PretrainConfig().position_spread),
              "vae": vae_ceiling(pipe, classifier, args.photo_seed),
              "base_prompts": base_prompts(pipe, classifier, args.seeds),
              "text": text_binding(pipe),
              "shape_under_blur": shape_under_blur(pipe, classifier)}
    print(json.dumps(result), flush=True)
    variants = json.loads(args.variants)
    for name in filter(None, args.lora.split(",")):
        for variant, overrides in variants.items():
            train = dict(overrides)
            spread = train.pop("photo_spread", PHOTO_SPREAD)  # not a train key: where the photos' objects sit
            with tempfile.TemporaryDirectory() as tmp:
                r = concept_after_lora(world, name, Path(tmp), train, args.photo_seed, photo_spread=spread)
            result.setdefault("lora", {}).setdefault(name, {})[variant] = r
            print(json.dumps({name: {variant: r}}), flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
