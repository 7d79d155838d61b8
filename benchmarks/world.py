"""Benchmark the world preset: pretrain it (or reuse the shipped one), then measure it.

    python -m benchmarks.world --reuse            # score the shipped models/world (minutes)
    python -m benchmarks.world --seed 1 --out /tmp/world1   # pretrain from scratch (about an hour)
    python -m benchmarks.world --reuse --all-concepts       # + the LoRA check on all 5 default concepts

Base: every seen colour x shape pair (and, separately, every held-out pair) is prompted as a
full base caption with fixed seeds, backgrounds cycled; the attribute classifier says what
each image shows. Evaluator: zero-shot shape accuracy of the world CLIP on fresh renders.
Personalization: one concept learned by one LoRA step of the project's own training code,
then the share of its samples that show its pattern (`concept_acc_after_lora`; with
--all-concepts also per concept of the default sequence and their mean). The last stdout
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import open_clip
import torch
import yaml
from diffusers import DDIMScheduler, StableDiffusionPipeline

from lifelong_diffusion.evaluate import EvalConfig, evaluate_snapshot
from lifelong_diffusion.grid import image_grid
from lifelong_diffusion.ingest import ingest_concept
from lifelong_diffusion.presets import WORLD_DIR
from lifelong_diffusion.snapshot import empty_snapshot, save_snapshot
from lifelong_diffusion.train import TrainConfig, train_concept
from lifelong_diffusion.world import DEFAULT_SEQUENCE, attributes, concept_by_name, write_concept_folder
from lifelong_diffusion.world.build import WorldBuildConfig, build_world_models
from lifelong_diffusion.world.evaluator import WORLD_CLIP, zero_shot_accuracy
from lifelong_diffusion.world.pretrain import seen_prompts
from lifelong_diffusion.world.render import BACKGROUNDS, COLORS, HELDOUT_COMBOS, SHAPES, Scene, caption

REPO = Path(__file__).resolve().parents[1]


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


def score_base(pipe_dir: Path, classifier, n_seeds: int, steps: int, guidance: float,
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
        first_seed = {(r[0], r[1]): im for r, im in zip(seen + heldout, images_seen + images_held)
                      if r[3] == 0}
        shape_grid(first_seed).save(grid)
    return result


def shape_grid(images: dict[tuple[str, str], object]):
    """One row per shape, one column per colour (in COLORS order): the whole vocabulary at a glance."""
    rows = []
    for shape in SHAPES:
        held = [c for c in COLORS if (c, shape) in HELDOUT_COMBOS]
        label = f"{shape} (held out: {', '.join(held)})" if held else shape
        rows.append((label, [images.get((color, shape)) for color in COLORS]))
    return image_grid(rows, cell=48)


def concept_after_lora(world_dir: Path, concept: str, steps: int, n_seeds: int, work: Path,
                       grid: str | None) -> dict:
    """Learn one world concept from the base with the project's own train/evaluate code."""
    spec = concept_by_name(concept)
    concept_dir = write_concept_folder(spec, work / "concepts")
    ingest_concept(concept_dir, work / "processed" / concept, resolution=32, min_size=32)
    save_snapshot(empty_snapshot(str(world_dir / "base")), work / "adapters" / "base")
    train = {**yaml.safe_load((REPO / "params.yaml").read_text())["train"], "steps": steps}
    start = time.perf_counter()
    train_concept(work / "adapters" / "base", work / "processed" / concept, work / "adapters" / concept,
                  TrainConfig(**train), progress=False)
    seconds = time.perf_counter() - start
    cfg = EvalConfig(seeds=list(range(n_seeds)), clip_model=WORLD_CLIP,
                     clip_weights=str(world_dir / "clip.safetensors"),
                     attribute_classifier=str(world_dir / "attributes.safetensors"))
    metrics = evaluate_snapshot(work / "adapters" / concept, work / "processed", work / "eval", cfg)
    if grid:
        (work / "eval" / "grid.png").replace(grid)
    scores = metrics["per_concept"][concept]
    return {"concept_acc_after_lora": scores["pattern_acc"], "concept_attr_acc_after_lora": scores["attr_acc"],
            "concept_clip_i_after_lora": scores["clip_i"], "lora_steps": steps, "lora_seconds": seconds,
            "class_attr_acc_after_lora": metrics["class_prompts"][spec.class_word]["attr_acc"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse", nargs="?", const=str(WORLD_DIR),
                        help="score this world folder (default: the shipped models/world) without pretraining")
    parser.add_argument("--seed", type=int, default=0, help="world seed to pretrain with")
    parser.add_argument("--out", help="where to write the pretrained world (default: a temp folder)")
    parser.add_argument("--config", default="{}", help="JSON object of params.yaml `pretrain` overrides")
    parser.add_argument("--seeds", type=int, default=2, help="images per colour x shape pair")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--concept", default="striped-star", help="world concept for the LoRA check")
    parser.add_argument("--lora-steps", type=int, default=300)
    parser.add_argument("--concept-seeds", type=int, default=16)
    parser.add_argument("--all-concepts", action="store_true",
                        help="also run the LoRA check on every concept of the default sequence")
    parser.add_argument("--grid", help="write PNG grids of the samples here (base, and -concept.png)")
    args = parser.parse_args(argv)

    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        world_dir = Path(args.reuse or args.out or Path(tmp) / "world")
        if not args.reuse:
            section = {**yaml.safe_load((REPO / "params.yaml").read_text())["pretrain"],
                       **json.loads(args.config), "seed": args.seed}
            build_world_models(WorldBuildConfig.from_params(section), world_dir)
        report = json.loads((world_dir / "pretrain.json").read_text())
        result.update(pretrain_seconds=report["pretrain_seconds"],
                      base_pretrain_seconds=report["base"]["pretrain_seconds"],
                      unet_steps=report["base"]["unet_steps"])
        classifier = attributes.load(world_dir / "attributes.safetensors")
        result.update(score_base(world_dir / "base", classifier, args.seeds, args.sample_steps,
                                 args.guidance, args.grid))
        clip, _, _ = open_clip.create_model_and_transforms(WORLD_CLIP, pretrained=str(world_dir / "clip.safetensors"))
        zero_shot = zero_shot_accuracy(clip)
        result.update(evaluator_zero_shot_acc=zero_shot["shape"], evaluator_zero_shot_color_acc=zero_shot["color"])
        concept_grid = args.grid and str(Path(args.grid).with_suffix("")) + "-concept.png"
        result.update(concept_after_lora(world_dir, args.concept, args.lora_steps, args.concept_seeds,
                                         Path(tmp) / "lora", concept_grid))
        if args.all_concepts:  # the main check's concept is not trained a second time
            by_concept = {name: result["concept_acc_after_lora"] if name == args.concept else
                          concept_after_lora(world_dir, name, args.lora_steps, args.concept_seeds,
                                             Path(tmp) / f"lora-{name}", None)["concept_acc_after_lora"]
                          for name in DEFAULT_SEQUENCE}
            result.update(concept_acc_by_concept=by_concept,
                          concept_acc_mean=sum(by_concept.values()) / len(by_concept))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
