"""Benchmark the world preset: pretrain it (or reuse the shipped one), then measure it.

    python -m benchmarks.world --reuse            # score the shipped models/world (minutes)
    python -m benchmarks.world --seed 1 --out /tmp/world1   # pretrain from scratch (about an hour)
    python -m benchmarks.world --reuse --all-concepts       # + the LoRA check on all 12 concepts
    python -m benchmarks.world --reuse --all-concepts --concept-seed 7   # on photos nobody tuned on

Base: every seen colour x shape pair (and, separately, every held-out pair) is prompted as a
full base caption with fixed seeds, backgrounds cycled; the attribute classifier says what
each image shows. Evaluator: zero-shot shape accuracy of the world CLIP on fresh renders.
Personalization: one concept learned by one LoRA step of the project's own training code
(params.yaml's `train` as shipped), then the shares of 16 samples of its identifier prompt
with its shape and pattern, its pattern, its colour, and of its class prompt still plain;
with --all-concepts per concept for all 12 world concepts, their mean and minimum. The last
stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import open_clip
import torch
import yaml
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image

from lifelong_diffusion.backbone import native_resolution
from lifelong_diffusion.evaluate import EvalConfig, generate
from lifelong_diffusion.generation import PersonalizedModel
from lifelong_diffusion.grid import image_grid
from lifelong_diffusion.ingest import ingest_concept
from lifelong_diffusion.presets import WORLD_DIR
from lifelong_diffusion.snapshot import empty_snapshot, load_snapshot, save_snapshot
from lifelong_diffusion.stamps import content_hash
from lifelong_diffusion.train import TrainConfig, read_processed_concept, train_concept
from lifelong_diffusion.world import CONCEPTS, attributes, concept_by_name, write_concept_folder
from lifelong_diffusion.world.build import WorldBuildConfig, build_world_models
from lifelong_diffusion.world.concepts import PHOTO_SPREAD
from lifelong_diffusion.world.evaluator import WORLD_CLIP, zero_shot_accuracy
from lifelong_diffusion.world.pretrain import seen_prompts
from lifelong_diffusion.world.render import BACKGROUNDS, COLORS, HELDOUT_COMBOS, SHAPES, Scene, caption

REPO = Path(__file__).resolve().parents[1]
# Figures of the LoRA check that --all-concepts reports per concept, with their mean and minimum.
PER_CONCEPT = ("concept_attr_acc_after_lora", "concept_pattern_acc_after_lora", "concept_shape_acc_after_lora",
               "concept_color_acc_after_lora", "class_attr_acc_after_lora")


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


def train_params(overrides: dict | None = None) -> dict:
    """params.yaml's `train` section as shipped (its own step count), plus `overrides`."""
    return {**yaml.safe_load((REPO / "params.yaml").read_text())["train"], **(overrides or {})}


def concept_after_lora(world_dir: Path, concept: str, work: Path, overrides: dict | None = None,
                       photo_seed: int = 0, n_seeds: int = 16, grid: str | None = None,
                       photo_spread: float = PHOTO_SPREAD, n_photos: int = 5,
                       classifier_path: Path | None = None, samples_dir: Path | None = None) -> dict:
    """Learn one world concept from the base with the project's own training code, then read
    16 samples of its identifier prompt and of its class prompt with the attribute classifier.

    concept_* figures: shares of identifier-prompt samples with the concept's shape and
    pattern (attr), its pattern, its two colours; class_attr: the class prompt still draws
    the plain class (right shape, no pattern) after the LoRA. With `samples_dir` the samples
    are kept there as PNGs and reused while everything that made them is unchanged, so
    another classifier re-reads them in seconds instead of a LoRA step per concept."""
    spec = concept_by_name(concept)
    cfg = TrainConfig(**train_params(overrides))
    train = {**asdict(cfg), "method_params": cfg.selected_method_params}  # the other methods are never read
    made_by = {"concept": concept, "photo_seed": photo_seed, "n_seeds": n_seeds, "photo_spread": photo_spread,
               "n_photos": n_photos, "train": train, "base": content_hash(world_dir / "base")}
    kept = samples_dir and load_samples(samples_dir / concept, made_by)
    if kept:
        photos, concept_images, class_images, seconds = kept
    else:
        photos, concept_images, class_images, seconds = lora_samples(world_dir, spec, work, cfg, made_by)
        if samples_dir:
            save_samples(samples_dir / concept, made_by, photos, concept_images, class_images, seconds)
    classifier = attributes.load(classifier_path or world_dir / "attributes.safetensors")
    reads, class_reads = attributes.predict(classifier, concept_images), attributes.predict(classifier, class_images)
    if grid:
        eval_cfg = EvalConfig()
        image_grid([(f"{concept} {spec.token}", [*photos[:2], *concept_images]),
                    (eval_cfg.text_prompt.format(class_word=spec.class_word), [None, None, *class_images])],
                   cell=48).save(grid)

    scheme = {spec.color, spec.pattern_color}  # both colours, in either role (attributes.PATTERN_COLOR_LABELS)

    def share(preds, test) -> float:
        return sum(map(test, preds)) / len(preds)
    return {
        "concept_attr_acc_after_lora": share(reads, lambda p: p["shape"] == spec.shape and p["pattern"] == spec.pattern),
        "concept_pattern_acc_after_lora": share(reads, lambda p: p["pattern"] == spec.pattern),
        "concept_shape_acc_after_lora": share(reads, lambda p: p["shape"] == spec.shape),
        "concept_color_acc_after_lora": share(reads, lambda p: {p["color"], p["pattern_color"]} == scheme),
        "class_attr_acc_after_lora": share(class_reads, lambda p: p["shape"] == spec.shape and p["pattern"] is None),
        "lora_steps": cfg.steps, "lora_seconds": seconds,
    }


def mean_check(runs: list[dict]) -> dict:
    """One concept's figures as the mean over runs with different training seeds, each run's
    own shares kept beside them (`<key>_by_train_seed`)."""
    if len(runs) == 1:
        return runs[0]
    out = {key: sum(r[key] for r in runs) / len(runs) for key in runs[0]}
    out["lora_steps"] = runs[0]["lora_steps"]
    out.update({f"{key}_by_train_seed": [r[key] for r in runs] for key in PER_CONCEPT})
    return out


def lora_samples(world_dir: Path, spec, work: Path, cfg: TrainConfig, made_by: dict):
    """The concept's photos, then one LoRA step from the base and its samples of the identifier
    prompt and of the class prompt; the step's seconds last."""
    concept_dir = write_concept_folder(spec, work / "concepts", made_by["n_photos"], seed=made_by["photo_seed"],
                                       spread=made_by["photo_spread"])
    # at the base's own size: a world pretrained at another image_size trains and samples there
    ingest_concept(concept_dir, work / "processed" / spec.name, resolution=native_resolution(world_dir / "base"),
                   min_size=32)
    save_snapshot(empty_snapshot(str(world_dir / "base")), work / "adapters" / "base")
    start = time.perf_counter()
    train_concept(work / "adapters" / "base", work / "processed" / spec.name, work / "adapters" / spec.name,
                  cfg, progress=False)
    seconds = time.perf_counter() - start
    model = PersonalizedModel(load_snapshot(work / "adapters" / spec.name), "cpu")
    eval_cfg = EvalConfig(seeds=list(range(made_by["n_seeds"])))
    concept_images = generate(model, eval_cfg.prompt.format(token=spec.token, class_word=spec.class_word), eval_cfg)
    class_images = generate(model, eval_cfg.text_prompt.format(class_word=spec.class_word), eval_cfg)
    photos = read_processed_concept(work / "processed" / spec.name).images
    return photos, concept_images, class_images, seconds


def save_samples(folder: Path, made_by: dict, photos, concept_images, class_images, seconds: float) -> None:
    """PNGs (lossless: a re-read sees the exact pixels) and made_by.json, written last so a
    half-written folder is never reused; what an earlier run kept there goes first (it may
    have had more seeds)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for kind, images in (("photo", photos), ("concept", concept_images), ("class", class_images)):
        for i, image in enumerate(images):
            image.save(folder / f"{kind}-{i:02d}.png")
    (folder / "made_by.json").write_text(json.dumps({**made_by, "lora_seconds": seconds}, indent=1) + "\n")


def load_samples(folder: Path, made_by: dict):
    """What `save_samples` wrote, or None when it is missing or was made by anything else."""
    meta = folder / "made_by.json"
    if not meta.exists():
        return None
    kept = json.loads(meta.read_text())
    seconds = kept.pop("lora_seconds")
    if kept != json.loads(json.dumps(made_by)):
        return None

    def images(kind: str) -> list:
        return [Image.open(p).convert("RGB") for p in sorted(folder.glob(f"{kind}-*.png"))]
    return images("photo"), images("concept"), images("class"), seconds


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
    parser.add_argument("--lora-steps", type=int, help="LoRA steps (default: params.yaml train.steps)")
    parser.add_argument("--train", default="{}", help="JSON object of params.yaml `train` overrides "
                        "for the LoRA checks, e.g. '{\"lr\": 0.002}'")
    parser.add_argument("--train-seeds", type=int, default=1,
                        help="learn each concept this many times (train.seed, seed+1, ...) and report the "
                        "means: one run's score moves by up to 0.69 with the training seed alone")
    parser.add_argument("--concept-seeds", type=int, default=16, help="samples per prompt after the LoRA")
    parser.add_argument("--concept-seed", type=int, default=0,
                        help="world seed of the concept photos (0: the photos in data/concepts)")
    parser.add_argument("--photos", type=int, default=5, help="photos per concept (the shipped folders have 5)")
    parser.add_argument("--all-concepts", action="store_true",
                        help="also run the LoRA check on all 12 world concepts")
    parser.add_argument("--grid", help="write PNG grids of the samples here (base, and -concept.png)")
    parser.add_argument("--samples", help="keep each concept's LoRA samples in this folder and reuse them "
                        "while the base, photos and train settings are unchanged")
    parser.add_argument("--classifier", help="attribute classifier to read with (default: the world folder's)")
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
        classifier_path = Path(args.classifier or world_dir / "attributes.safetensors")
        classifier = attributes.load(classifier_path)
        result.update(score_base(world_dir / "base", classifier, args.seeds, args.sample_steps,
                                 args.guidance, args.grid))
        clip, _, _ = open_clip.create_model_and_transforms(WORLD_CLIP, pretrained=str(world_dir / "clip.safetensors"))
        zero_shot = zero_shot_accuracy(clip)
        result.update(evaluator_zero_shot_acc=zero_shot["shape"], evaluator_zero_shot_color_acc=zero_shot["color"])
        concept_grid = args.grid and str(Path(args.grid).with_suffix("")) + "-concept.png"
        overrides = json.loads(args.train) | ({} if args.lora_steps is None else {"steps": args.lora_steps})

        first_seed = train_params(overrides)["seed"]

        def lora_run(name: str, train_seed: int, grid: str | None) -> dict:
            # train seeds after the first keep their samples apart, the first where it always did
            kept = args.samples and Path(args.samples) / ("" if train_seed == first_seed else f"train-seed-{train_seed}")
            return concept_after_lora(world_dir, name, Path(tmp) / f"lora-{name}-{train_seed}",
                                      {**overrides, "seed": train_seed}, args.concept_seed, args.concept_seeds,
                                      grid, n_photos=args.photos, classifier_path=classifier_path, samples_dir=kept)

        def lora_check(name: str, grid: str | None = None) -> dict:
            return mean_check([lora_run(name, first_seed + k, grid if k == 0 else None)
                               for k in range(args.train_seeds)])
        main_check = lora_check(args.concept, concept_grid)
        result.update(main_check, concept_acc_after_lora=main_check["concept_pattern_acc_after_lora"])
        if args.all_concepts:  # the main check's concept is not trained a second time
            checks = {spec.name: main_check if spec.name == args.concept else lora_check(spec.name)
                      for spec in CONCEPTS}
            result.update(concept_seed=args.concept_seed, photos=args.photos, train_seeds=args.train_seeds,
                          by_concept=checks)
            # the session-5 keys, kept for their readers: the pattern share per concept
            result["concept_acc_by_concept"] = {n: c["concept_pattern_acc_after_lora"] for n, c in checks.items()}
            for key in PER_CONCEPT:
                values = [c[key] for c in checks.values()]
                result[f"{key}_mean"], result[f"{key}_min"] = sum(values) / len(values), min(values)
            result["concept_acc_mean"] = result["concept_pattern_acc_after_lora_mean"]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
