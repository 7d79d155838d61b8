"""Evaluation after a step: every concept seen so far and the class prompts, fixed seeds.

Prompts and seeds are identical across steps, so any change of a score between steps is a
change of the model (forgetting or learning), never sampling noise. Each score is kept per
seed too (`samples`), so cl_metrics can bootstrap over seeds: how much a figure would move
with other seeds.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from statistics import mean

from .base_model import pick_device
from .cl_metrics import SAMPLES
from .clip_score import ClipScorer
from .config import EvalConfig
from .fileio import atomic_dir
from .generation import PersonalizedModel
from .grid import image_grid
from .snapshot import load_snapshot
from .stamps import content_hash, fingerprint_of, inputs_key
from .train import read_processed_concept


REFERENCE_COLUMNS = 2  # the grid starts each concept row with two of its photos, then the samples
GRID_SEEDS = 8  # samples shown per grid row (the first seeds); scores use every seed


def generate(model: PersonalizedModel, prompt: str, cfg: EvalConfig):
    return model.generate(prompt, cfg.seeds, cfg.steps, cfg.guidance_scale)


def dino_scorer(folder: str | None, device: str):
    if not folder:
        return None
    from .dino_score import DinoScorer  # transformers' ViT: only when a DINO model is configured

    return DinoScorer(folder, device)


class AttributeReader:
    """Exact scores from the attribute classifier, for concepts with known ground truth.

    A concept sample counts when it shows the concept's shape *and* pattern; a class-prompt
    sample ("a photo of a star") counts when it shows the shape with no pattern, so a
    pattern leaking into the plain class is relevant-concept forgetting. `pattern_acc` asks
    only for the pattern (none, for a class prompt): the world base draws a concept's
    pattern far more reliably than its shape. Colour is not
    required: the classifier reads the base colour of striped or checked objects less
    reliably (0.78-0.88) than shape and pattern (>= 0.99).
    """

    def __init__(self, weights: str):
        from .world import attributes  # torch only; keeps the CLIP-only path free of world code

        self._attributes = attributes
        self.model = attributes.load(weights)

    def concept_samples(self, images, truth: dict) -> dict[str, list[float]]:
        """1.0 or 0.0 per image, in order."""
        preds = self._attributes.predict(self.model, images)
        pattern = [p["pattern"] == truth["pattern"] for p in preds]
        return self._samples(preds, pattern, truth["shape"])

    def class_samples(self, images, shape: str) -> dict[str, list[float]]:
        preds = self._attributes.predict(self.model, images)
        return self._samples(preds, [p["pattern"] is None for p in preds], shape)

    @staticmethod
    def _samples(preds: list[dict], pattern_ok: list[bool], shape: str) -> dict[str, list[float]]:
        both = [ok and p["shape"] == shape for ok, p in zip(pattern_ok, preds)]
        return {"attr_acc": [float(b) for b in both], "pattern_acc": [float(ok) for ok in pattern_ok]}


def means(samples: dict[str, list[float]]) -> dict[str, float]:
    return {key: mean(values) for key, values in samples.items()}


def with_samples(samples: dict[str, list[float]]) -> dict:
    """Each score's mean under its own key (what R and every reader use) and its per-seed
    values, in seed order, under `samples`."""
    return {**means(samples), SAMPLES: samples}


def world_truth(processed_dir: Path) -> dict | None:
    """The `world:` ground truth a world concept's concept.yaml carries (kept in the manifest)."""
    manifest = json.loads((Path(processed_dir) / "manifest.json").read_text())
    return (manifest.get("extra") or {}).get("world")


# The means only, for `dvc metrics show` (numbers, no hashes, no per-seed lists);
# metrics.json keeps everything.
SCORES_FILE = "scores.json"


def scores_only(metrics: dict) -> dict:
    def means(table: dict) -> dict:
        return {name: {k: v for k, v in scores.items() if k != SAMPLES} for name, scores in table.items()}
    return {"step": metrics["step"], "summary": metrics["summary"],
            "per_concept": means(metrics["per_concept"]), "class_prompts": means(metrics["class_prompts"])}


# The evaluators named by a file or folder path. The key records their content, not their
# path: a project moved to another folder (or evaluated from a clone) keeps its evaluations,
# and replaced weights invalidate them.
_WEIGHT_FIELDS = ("clip_weights", "attribute_classifier", "dino_model")


def eval_inputs_key(snapshot_dir: Path, cfg: EvalConfig, class_words: list[str] = ()) -> str:
    settings = asdict(cfg)
    for key in _WEIGHT_FIELDS:
        if settings[key]:
            settings[key] = content_hash(Path(settings[key]))
    return inputs_key(fingerprint_of(snapshot_dir), settings, *class_words)


def evaluate_snapshot(snapshot_dir: Path, processed_root: Path, out_dir: Path,
                      cfg: EvalConfig, class_words: list[str] = ()) -> dict:
    """Score S_t on every concept learned so far and on the class prompts of their class
    words plus `class_words` (S_0 is scored on the whole sequence's class words: the
    reference for relevant-concept drift); writes metrics.json and grid.png."""
    snap = load_snapshot(snapshot_dir)
    device = pick_device(cfg.device)
    model = PersonalizedModel(snap, device, cfg.precision, cfg.resolution)
    scorer = ClipScorer(cfg.clip_model, cfg.clip_weights, device)
    reader = AttributeReader(cfg.attribute_classifier) if cfg.attribute_classifier else None
    dino = dino_scorer(cfg.dino_model, device)
    rows, per_concept, class_prompts = [], {}, {}
    for c in snap.concepts:
        images = generate(model, cfg.prompt.format(**c), cfg)
        folder = Path(processed_root) / c["name"]
        references = read_processed_concept(folder).images
        text = cfg.text_prompt.format(**c)
        samples = {"clip_i": scorer.clip_i_samples(images, references),
                   "clip_t": scorer.clip_t_samples(images, text)}
        if dino:
            samples["dino"] = dino.dino_samples(images, references)
        truth = world_truth(folder) if reader else None
        if truth:
            samples.update(reader.concept_samples(images, truth))
        per_concept[c["name"]] = with_samples(samples)
        refs = (references + [None] * REFERENCE_COLUMNS)[:REFERENCE_COLUMNS]
        rows.append((f"{c['name']} {c['token']}", [*refs, *images[:GRID_SEEDS]]))
    for word in dict.fromkeys([c["class_word"] for c in snap.concepts] + list(class_words)):
        text = cfg.text_prompt.format(class_word=word)
        images = generate(model, text, cfg)
        samples = {"clip_t": scorer.clip_t_samples(images, text)}
        if reader:
            samples.update(reader.class_samples(images, word))
        class_prompts[word] = with_samples(samples)
        rows.append((text, [None] * REFERENCE_COLUMNS + images[:GRID_SEEDS]))
    metrics = {
        "step": snap.step, "concept": snap.name, "method": snap.method,
        "meaningful": scorer.meaningful, "evaluator": cfg.clip_model,
        "summary": {k: mean(v[k] for v in per_concept.values())  # S_0 has no concept yet
                    for k in per_concept.get(snap.name, {}).get(SAMPLES, {})},
        "per_concept": per_concept, "class_prompts": class_prompts,
        "inputs": eval_inputs_key(snapshot_dir, cfg, class_words),
    }
    if not scorer.meaningful:
        metrics["note"] = ("evaluator has random weights (evaluate.clip_weights is null): "
                           "scores are reproducible but not meaningful")
    with atomic_dir(Path(out_dir)) as tmp:
        kept = Path(out_dir) / ".gitignore"  # DVC's entry for grid.png, committed with the project
        if kept.is_file():
            (tmp / kept.name).write_bytes(kept.read_bytes())
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / SCORES_FILE).write_text(json.dumps(scores_only(metrics), indent=2) + "\n")
        image_grid(rows).save(tmp / "grid.png")
    return metrics
