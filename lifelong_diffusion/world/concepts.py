"""Personal concepts: patterned objects the base model has never drawn.

The base knows shapes, colours and patterns, but never saw a concept's shape with its
pattern (pretrain.CONCEPT_PATTERNS), so it cannot draw "a yellow star with blue stripes".

Each concept stands in for a user's own object ("my striped star"). Its few
"photos" are rendered from the world, and the ground truth written next to them
lets the evaluator later check whether a generated image shows the concept.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from .render import BACKGROUNDS, Scene, object_phrase, render, sample_scene

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
TOKEN_RE = re.compile(r"^<[a-z0-9_-]+>$")
# How far a concept photo's object wanders from the centre (render.sample_scene's spread):
# the base's own training spread (PretrainConfig.position_spread), as a user's photos frame
# their object the way the photos a real base was trained on do. With the full spread the
# photos' objects sat 3x further off centre than anything the base had drawn, and one LoRA
# step learnt the striped star's pattern but never its outline (shape read 0/16, centred
# 9/16; reports/world_pretraining.md, session 6).
PHOTO_SPREAD = 0.3


@dataclass(frozen=True)
class ConceptSpec:
    """A personal concept: a placeholder token bound to one patterned object."""

    name: str
    token: str
    shape: str
    color: str
    pattern: str
    pattern_color: str

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"concept name {self.name!r} is not a safe folder name")
        if not TOKEN_RE.match(self.token):
            raise ValueError(f"token {self.token!r} must match {TOKEN_RE.pattern}")
        if self.pattern is None:
            raise ValueError("a concept needs a pattern, or the base model could already describe it")
        # Scene validates the vocabulary; the background is irrelevant here.
        Scene(self.shape, self.color, next(iter(BACKGROUNDS)), self.pattern, self.pattern_color)

    @property
    def class_word(self) -> str:
        return self.shape

    @property
    def description(self) -> str:
        return object_phrase(self.shape, self.color, self.pattern, self.pattern_color)


# Shape/colour pairs avoid HELDOUT_COMBOS so concept results are not mixed up
# with compositional generalization; pattern colours contrast with the base colour.
CONCEPTS: tuple[ConceptSpec, ...] = (
    ConceptSpec("striped-star", "<c1>", "star", "yellow", "stripes", "blue"),
    ConceptSpec("dotted-heart", "<c2>", "heart", "red", "dots", "yellow"),
    ConceptSpec("checked-square", "<c3>", "square", "orange", "checks", "blue"),
    ConceptSpec("ringed-circle", "<c4>", "circle", "cyan", "rings", "red"),
    ConceptSpec("dotted-hexagon", "<c5>", "hexagon", "purple", "dots", "yellow"),
    ConceptSpec("striped-triangle", "<c6>", "triangle", "green", "stripes", "pink"),
    ConceptSpec("checked-diamond", "<c7>", "diamond", "red", "checks", "yellow"),
    ConceptSpec("striped-cross", "<c8>", "cross", "purple", "stripes", "cyan"),
    ConceptSpec("ringed-hexagon", "<c9>", "hexagon", "orange", "rings", "purple"),
    ConceptSpec("dotted-star", "<c10>", "star", "blue", "dots", "yellow"),
    ConceptSpec("checked-circle", "<c11>", "circle", "pink", "checks", "blue"),
    ConceptSpec("ringed-square", "<c12>", "square", "green", "rings", "yellow"),
)
_BY_NAME = {spec.name: spec for spec in CONCEPTS}

# Default lifelong order: five different shapes covering all four patterns.
DEFAULT_SEQUENCE: tuple[str, ...] = (
    "striped-star", "dotted-heart", "checked-square", "ringed-circle", "dotted-hexagon",
)

# The long sequence (benchmarks.methods --long): the default five, then five more.
LONG_SEQUENCE: tuple[str, ...] = tuple(spec.name for spec in CONCEPTS[:10])


def concept_by_name(name: str) -> ConceptSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown concept {name!r}; valid: {', '.join(_BY_NAME)}") from None


def concept_scenes(spec: ConceptSpec, n_images: int = 5, seed: int = 0,
                   spread: float = PHOTO_SPREAD) -> list[Scene]:
    """The scenes of the user's few photos: one instance with varied placement, size and
    background.

    The concept name is mixed into the seed so different concepts get different
    placements; backgrounds are cycled so the model cannot tie the concept to one.
    """
    if n_images < 1:
        raise ValueError("n_images must be at least 1")
    rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
    backgrounds = [str(b) for b in rng.permutation(list(BACKGROUNDS))]
    return [
        sample_scene(rng, shape=spec.shape, color=spec.color, pattern=spec.pattern,
                     pattern_color=spec.pattern_color, background=backgrounds[i % len(backgrounds)],
                     spread=spread)
        for i in range(n_images)
    ]


def render_concept_images(spec: ConceptSpec, n_images: int = 5, seed: int = 0,
                          size: int = 64, spread: float = PHOTO_SPREAD) -> list[Image.Image]:
    """The user's few photos of `spec` (concept_scenes), rendered at `size` pixels."""
    return [render(scene, size) for scene in concept_scenes(spec, n_images, seed, spread)]


def _concept_yaml(spec: ConceptSpec) -> dict:
    return {
        "token": spec.token,
        "class_word": spec.class_word,
        "description": spec.description,
        "world": {
            "shape": spec.shape,
            "color": spec.color,
            "pattern": spec.pattern,
            "pattern_color": spec.pattern_color,
        },
    }


def write_concept_folder(spec: ConceptSpec, root: Path, n_images: int = 5, seed: int = 0,
                         size: int = 64, spread: float = PHOTO_SPREAD) -> Path:
    """Write root/<name>/00.png ... and concept.yaml, replacing any earlier folder.

    Files go to a temporary sibling first and are renamed into place, so readers
    never see a half-written concept.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / spec.name
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=root))
    try:
        for i, image in enumerate(render_concept_images(spec, n_images, seed, size, spread)):
            image.save(staging / f"{i:02d}.png")
        with open(staging / "concept.yaml", "w") as f:
            yaml.safe_dump(_concept_yaml(spec), f, sort_keys=False)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{spec.name}.old.", dir=root))
            target.rename(old / spec.name)
            staging.rename(target)
            shutil.rmtree(old)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
