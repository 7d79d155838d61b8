"""Benchmark the world base model: pretrain it (or reuse a folder), sample, and read the images.

    python -m benchmarks.world --minutes 15 --out models/world-base-candidate
    python -m benchmarks.world --reuse models/world-base-candidate

Every seen colour x shape pair (and, separately, every held-out pair) is prompted as a
full base caption with fixed seeds, backgrounds cycled; the attribute classifier says
what each image shows. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from lifelong_diffusion.grid import image_grid
from lifelong_diffusion.world import attributes
from lifelong_diffusion.world.pretrain import PretrainConfig, pretrain_world_model, seen_prompts
from lifelong_diffusion.world.render import BACKGROUNDS, HELDOUT_COMBOS, Scene, caption


def prompt_rows(pairs: list[tuple[str, str]], n_seeds: int) -> list[tuple[str, str, str, int]]:
    """(color, shape, prompt, seed) for each pair and seed; the background rotates with both."""
    backgrounds = list(BACKGROUNDS)
    rows = []
    for i, (color, shape) in enumerate(pairs):
        for seed in range(n_seeds):
            bg = backgrounds[(i + seed) % len(backgrounds)]
            rows.append((color, shape, caption(Scene(shape, color, bg)), seed))
    return rows


@torch.no_grad()
def sample(pipe: StableDiffusionPipeline, rows, steps: int, guidance: float, batch: int = 64) -> list:
    """One image per row, each with its own seeded generator so batching never changes an image."""
    images = []
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        images += pipe(
            [r[2] for r in chunk], num_inference_steps=steps, guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(r[3]) for r in chunk],
        ).images
    return images


def score(classifier, rows, images) -> dict[str, float]:
    preds = attributes.predict(classifier, images)
    n = len(rows)
    return {
        "color_acc": sum(p["color"] == r[0] for p, r in zip(preds, rows)) / n,
        "shape_acc": sum(p["shape"] == r[1] for p, r in zip(preds, rows)) / n,
        "pattern_false_rate": sum(p["pattern"] is not None for p in preds) / n,
    }


def load_classifier(path: str | None, log):
    """Reuse a saved classifier, or train one (seeded, so every run scores alike) and save it."""
    if path and Path(path).exists():
        return attributes.load(path)
    start = time.perf_counter()
    model = attributes.train_attribute_classifier(seed=0)
    log(f"attribute classifier trained in {time.perf_counter() - start:.0f}s: {attributes.accuracy(model)}")
    if path:
        attributes.save(model, path)
    return model


def evaluate(pipe_dir: Path, classifier, n_seeds: int, steps: int, guidance: float,
             grid: str | None) -> dict:
    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # as the project's evaluator samples
    seen, heldout = prompt_rows(seen_prompts(), n_seeds), prompt_rows(sorted(HELDOUT_COMBOS), n_seeds)
    start = time.perf_counter()
    images_seen, images_held = sample(pipe, seen, steps, guidance), sample(pipe, heldout, steps, guidance)
    result = {"sample_seconds": time.perf_counter() - start, **score(classifier, seen, images_seen)}
    held = score(classifier, heldout, images_held)
    result.update({f"{k}_heldout": v for k, v in held.items()})
    if grid:
        rows = [(r[2].removesuffix(" background"), images_seen[j:j + n_seeds])
                for j, r in enumerate(seen) if j % n_seeds == 0]
        image_grid(rows + [(f"HELD {r[2]}", images_held[j:j + n_seeds])
                           for j, r in enumerate(heldout) if j % n_seeds == 0], cell=48).save(grid)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse", help="score this pipeline folder instead of pretraining")
    parser.add_argument("--out", help="where to save the pretrained pipeline (default: a temp folder)")
    parser.add_argument("--minutes", type=float, help="wall-clock cap on pretraining")
    parser.add_argument("--steps", type=int, help="UNet steps (default: PretrainConfig's)")
    parser.add_argument("--config", default="{}", help="JSON object of PretrainConfig overrides")
    parser.add_argument("--seeds", type=int, default=2, help="images per colour x shape pair")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--classifier",
                        help="attribute classifier weights: loaded if present, else trained and saved")
    parser.add_argument("--grid", help="write a PNG grid of the samples here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the machine is shared; one core per process

    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        pipe_dir = Path(args.reuse or args.out or tmp)
        if not args.reuse:
            overrides = json.loads(args.config)
            overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
            if args.minutes:
                overrides.setdefault("max_minutes", args.minutes)
                overrides.setdefault("steps", 10**9)  # time decides
            if args.steps:
                overrides["steps"] = args.steps
            cfg = dataclasses.replace(PretrainConfig(), **overrides)
            stats = pretrain_world_model(cfg, pipe_dir)
            result.update({k: v for k, v in stats.items() if k != "config"}, config=stats["config"])
        classifier = load_classifier(args.classifier, print)
        result.update(evaluate(pipe_dir, classifier, args.seeds, args.sample_steps, args.guidance, args.grid))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
