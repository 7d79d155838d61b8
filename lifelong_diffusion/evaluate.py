"""Evaluation after a step: every concept seen so far and the class prompts, fixed seeds.

Prompts and seeds are identical across steps, so any change of a score between steps is a
change of the model (forgetting or learning), never sampling noise.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DDIMScheduler
from PIL import Image

from .base_model import image_resolution, load_pipeline, pick_device
from .clip_score import ClipScorer
from .fileio import atomic_dir
from .grid import image_grid
from .lora import STUDENT, add_lora, add_tokens
from .snapshot import Snapshot, load_snapshot
from .stamps import fingerprint_of, inputs_key
from .train import read_processed_concept


@dataclass
class EvalConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    steps: int = 20
    guidance_scale: float = 5.0
    prompt: str = "a photo of {token} {class_word}"
    text_prompt: str = "a photo of a {class_word}"  # CLIP-T text, and the class prompt
    clip_model: str = "ld-tiny-clip"
    clip_weights: str | None = None
    device: str = "auto"


def personalized_pipeline(snap: Snapshot, device: str):
    """The base pipeline with S_t's tokens and adapter, ready to sample, DDIM for speed."""
    pipe = load_pipeline(snap.base_model, device)
    add_tokens(pipe.tokenizer, pipe.text_encoder, snap.tokens)
    if snap.adapter:
        add_lora(pipe.unet, snap.lora, STUDENT, snap.adapter)
        pipe.unet.set_adapter(STUDENT)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


@torch.no_grad()
def generate(pipe, prompt: str, cfg: EvalConfig) -> list[Image.Image]:
    """One image per seed; each seed has its own generator so batch size never matters."""
    size = image_resolution(pipe)
    return pipe(
        [prompt] * len(cfg.seeds), height=size, width=size, num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
        generator=[torch.Generator().manual_seed(s) for s in cfg.seeds],
    ).images


def eval_inputs_key(snapshot_dir: Path, cfg: EvalConfig) -> str:
    return inputs_key(fingerprint_of(snapshot_dir), cfg)


def evaluate_snapshot(snapshot_dir: Path, processed_root: Path, out_dir: Path,
                      cfg: EvalConfig) -> dict:
    """Score S_t on every concept learned so far; writes metrics.json and grid.png."""
    snap = load_snapshot(snapshot_dir)
    device = pick_device(cfg.device)
    pipe = personalized_pipeline(snap, device)
    scorer = ClipScorer(cfg.clip_model, cfg.clip_weights, device)
    rows, per_concept, class_prompts = [], {}, {}
    for c in snap.concepts:
        images = generate(pipe, cfg.prompt.format(**c), cfg)
        references = read_processed_concept(Path(processed_root) / c["name"]).images
        text = cfg.text_prompt.format(**c)
        per_concept[c["name"]] = {"clip_i": scorer.clip_i(images, references),
                                  "clip_t": scorer.clip_t(images, text)}
        rows.append((f"{c['name']} {c['token']}", images))
    for word in dict.fromkeys(c["class_word"] for c in snap.concepts):
        text = cfg.text_prompt.format(class_word=word)
        images = generate(pipe, text, cfg)
        class_prompts[word] = {"clip_t": scorer.clip_t(images, text)}
        rows.append((text, images))
    metrics = {
        "step": snap.step, "concept": snap.name, "method": snap.method,
        "meaningful": scorer.meaningful, "evaluator": cfg.clip_model,
        "summary": {k: sum(v[k] for v in per_concept.values()) / len(per_concept)
                    for k in ("clip_i", "clip_t")},
        "per_concept": per_concept, "class_prompts": class_prompts,
        "inputs": eval_inputs_key(snapshot_dir, cfg),
    }
    if not scorer.meaningful:
        metrics["note"] = ("evaluator has random weights (evaluate.clip_weights is null): "
                           "scores are reproducible but not meaningful")
    with atomic_dir(Path(out_dir)) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        image_grid(rows).save(tmp / "grid.png")
    return metrics
