"""Everything the world preset ships, built from one config: the base pipeline and both evaluators.

    models/world/base/                diffusers StableDiffusionPipeline (plain from_pretrained)
    models/world/clip.safetensors     open_clip `ld-world-clip` weights
    models/world/attributes.safetensors   attribute classifier
    models/world/pretrain.json        config, timings and the evaluators' own accuracies

The folder is replaced only when all of it is complete, so an interrupted run never
leaves a half-written preset behind.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from diffusers import AutoencoderKL

from ..fileio import atomic_dir
from . import attributes, evaluator
from .pretrain import PretrainConfig, pretrain_world_model


@dataclass
class WorldBuildConfig:
    base: PretrainConfig = field(default_factory=PretrainConfig)
    clip_steps: int = 1500
    clip_pool: int = 20000  # fresh renders the CLIP draws its batches from
    attribute_steps: int = 4000  # five heads (pattern colour too)
    attribute_pool: int = 16000
    attribute_vae_fraction: float = 0.5  # share of its renders seen through the base's VAE

    @classmethod
    def from_params(cls, section: dict) -> "WorldBuildConfig":
        """params.yaml's flat `pretrain` section: PretrainConfig fields plus the evaluators' own."""
        base_keys = {f.name for f in fields(PretrainConfig)}
        own_keys = {f.name for f in fields(cls)} - {"base"}
        unknown = set(section) - base_keys - own_keys
        if unknown:
            raise ValueError(f"params.yaml pretrain: unknown keys {sorted(unknown)}; "
                             f"valid: {sorted(base_keys | own_keys)}")
        base = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items() if k in base_keys}
        return cls(PretrainConfig(**base), **{k: v for k, v in section.items() if k in own_keys})


def build_world_models(cfg: WorldBuildConfig, out_dir: Path, log=print) -> dict:
    """Pretrain the base, then train the CLIP and the attribute classifier; returns pretrain.json."""
    with atomic_dir(Path(out_dir)) as tmp:
        report = {"base": pretrain_world_model(cfg.base, tmp / "base", log),
                  **train_evaluators(cfg, tmp, tmp / "base", log)}
        report["config"] = asdict(cfg)
        report["pretrain_seconds"] = (report["base"]["pretrain_seconds"] + report["clip"]["seconds"]
                                      + report["attributes"]["seconds"])
        (tmp / "pretrain.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def train_evaluators(cfg: WorldBuildConfig, out_dir: Path, base_dir: Path, log=print) -> dict:
    """The world CLIP and the attribute classifier into out_dir; their part of pretrain.json.

    The classifier also learns from the VAE of the base pipeline in base_dir, so a new base
    needs it retrained; a change to how patterns are drawn needs both retrained."""
    seed = cfg.base.seed
    start = time.perf_counter()
    clip = evaluator.train_world_clip(seed, cfg.clip_steps, pool_size=cfg.clip_pool, log=log)
    evaluator.save_world_clip(clip, out_dir / "clip.safetensors")
    report = {"clip": {"seconds": time.perf_counter() - start,
                       "zero_shot": evaluator.zero_shot_accuracy(clip)}}
    start = time.perf_counter()
    vae = AutoencoderKL.from_pretrained(Path(base_dir) / "vae").eval()
    classifier = attributes.train_attribute_classifier(seed, cfg.attribute_steps, pool_size=cfg.attribute_pool,
                                                       vae=vae, vae_fraction=cfg.attribute_vae_fraction)
    attributes.save(classifier, out_dir / "attributes.safetensors")
    report["attributes"] = {"seconds": time.perf_counter() - start,
                            "accuracy": attributes.accuracy(classifier),
                            "accuracy_through_vae": attributes.accuracy(classifier, vae=vae)}
    return report
