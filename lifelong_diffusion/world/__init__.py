"""Seeded procedural world: captioned base scenes and personal concepts."""

from .concepts import (
    CONCEPTS,
    DEFAULT_SEQUENCE,
    LONG_SEQUENCE,
    TOKEN_RE,
    ConceptSpec,
    concept_by_name,
    render_concept_images,
    write_concept_folder,
)
from .render import (
    BACKGROUNDS,
    COLORS,
    HELDOUT_COMBOS,
    PATTERNS,
    SHAPES,
    Scene,
    base_dataset,
    caption,
    object_phrase,
    render,
    sample_scene,
)

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "CONCEPTS",
    "DEFAULT_SEQUENCE",
    "HELDOUT_COMBOS",
    "LONG_SEQUENCE",
    "PATTERNS",
    "SHAPES",
    "TOKEN_RE",
    "ConceptSpec",
    "Scene",
    "base_dataset",
    "caption",
    "concept_by_name",
    "object_phrase",
    "render",
    "render_concept_images",
    "sample_scene",
    "write_concept_folder",
]
