"""The procedural world: deterministic, correctly captioned, and patterns really visible."""

import itertools

import numpy as np
import pytest
import yaml
from PIL import Image

from lifelong_diffusion.world import (
    BACKGROUNDS,
    COLORS,
    CONCEPTS,
    DEFAULT_SEQUENCE,
    LONG_SEQUENCE,
    HELDOUT_COMBOS,
    PATTERNS,
    SHAPES,
    TOKEN_RE,
    Scene,
    base_dataset,
    caption,
    concept_by_name,
    render,
    render_concept_images,
    sample_scene,
    write_concept_folder,
)
from lifelong_diffusion.world.render import _outline


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def parse_base_caption(text):
    """'a red star on a gray background' -> ('red', 'star', 'gray')."""
    words = text.split()
    assert len(words) == 7 and words[0] in ("a", "an") and words[3] == "on", text
    assert words[4] in ("a", "an") and words[6] == "background", text
    return words[1], words[2], words[5]


def test_vocabulary_sizes_and_heldout_combos_are_valid():
    assert len(SHAPES) >= 8 and len(COLORS) >= 8 and len(BACKGROUNDS) >= 4
    assert PATTERNS == ("stripes", "dots", "checks", "rings")
    assert 5 <= len(HELDOUT_COMBOS) <= 8
    colors = [c for c, _ in HELDOUT_COMBOS]
    shapes = [s for _, s in HELDOUT_COMBOS]
    assert len(set(colors)) == len(colors) and set(colors) <= set(COLORS)
    assert len(set(shapes)) == len(shapes) and set(shapes) <= set(SHAPES)


def test_backgrounds_contrast_with_every_colour():
    for bg, c in itertools.product(BACKGROUNDS.values(), COLORS.values()):
        assert np.linalg.norm(np.subtract(bg, c)) > 80, (bg, c)


def test_captions_exact_text():
    assert caption(Scene("star", "red", "gray")) == "a red star on a gray background"
    assert caption(Scene("circle", "orange", "white")) == "an orange circle on a white background"
    patterned = Scene("star", "red", "gray", pattern="stripes", pattern_color="blue")
    assert caption(patterned) == "a red star with blue stripes on a gray background"


def test_scene_rejects_invalid_attributes():
    with pytest.raises(ValueError, match="unknown shape"):
        Scene("blob", "red", "gray")
    with pytest.raises(ValueError, match="pattern_color must differ"):
        Scene("star", "red", "gray", pattern="dots", pattern_color="red")
    with pytest.raises(ValueError, match="without a pattern"):
        Scene("star", "red", "gray", pattern_color="blue")


def test_base_dataset_is_deterministic_and_seed_dependent():
    a, b, c = base_dataset(12, seed=1), base_dataset(12, seed=1), base_dataset(12, seed=2)
    assert [t for _, t in a] == [t for _, t in b]
    assert all(np.array_equal(pixels(x), pixels(y)) for (x, _), (y, _) in zip(a, b))
    assert any(not np.array_equal(pixels(x), pixels(y)) for (x, _), (y, _) in zip(a, c))
    prefix = base_dataset(5, seed=1)
    assert all(np.array_equal(pixels(x), pixels(y)) for (x, _), (y, _) in zip(prefix, a))
    assert all(im.mode == "RGB" and im.size == (32, 32) for im, _ in a)
    assert base_dataset(2, seed=1, size=48)[0][0].size == (48, 48)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_and_colour_renders_its_colour_at_the_centre(shape):
    for color, bg in zip(COLORS, itertools.cycle(BACKGROUNDS)):
        px = pixels(render(Scene(shape, color, bg, cx=0.5, cy=0.5, size=0.7)))
        centre = px[15:18, 15:18].reshape(-1, 3)
        assert np.abs(centre - COLORS[color]).max() <= 2, (shape, color)
        assert np.array_equal(px[0, 0], BACKGROUNDS[bg])
        # The shape covers a sensible part of the image.
        inside = (np.abs(px - COLORS[color]).max(axis=2) <= 2).mean()
        assert 0.12 < inside < 0.5, (shape, inside)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pattern_fills_only_the_interior_with_pattern_colour(pattern):
    for shape in SHAPES:
        plain = pixels(render(Scene(shape, "red", "gray", size=0.7, rotation=10)))
        patterned = pixels(render(Scene(shape, "red", "gray", pattern, "blue", size=0.7, rotation=10)))
        interior = np.abs(plain - COLORS["red"]).max(axis=2) == 0
        outside = np.abs(plain - BACKGROUNDS["gray"]).max(axis=2) == 0
        changed = np.abs(patterned - plain).max(axis=2) > 40
        near_blue = np.abs(patterned - COLORS["blue"]).max(axis=2) < 40
        assert changed[interior].mean() > 0.15, (shape, pattern)
        assert near_blue[interior].mean() > 0.1, (shape, pattern)
        assert np.array_equal(patterned[outside], plain[outside]), (shape, pattern)


def test_sampled_shapes_stay_inside_the_frame():
    rng = np.random.default_rng(0)
    for _ in range(300):
        s = sample_scene(rng)
        points = _outline(s.shape, s.rotation) * s.size / 2 + (s.cx, s.cy)
        assert points.min() >= -1e-9 and points.max() <= 1 + 1e-9


def test_base_dataset_excludes_heldout_and_patterns_unless_asked():
    captions = [t for _, t in base_dataset(1500, seed=3)]
    parsed = [parse_base_caption(t) for t in captions]
    assert not {(c, s) for c, s, _ in parsed} & HELDOUT_COMBOS
    assert not any(p in t for t in captions for p in PATTERNS + (" with ",))
    assert {s for _, s, _ in parsed} == set(SHAPES) and {c for c, _, _ in parsed} == set(COLORS)
    rng = np.random.default_rng(3)
    scenes = [sample_scene(rng, include_heldout=True) for _ in range(3000)]
    with_heldout = {(s.color, s.shape) for s in scenes}
    assert HELDOUT_COMBOS <= with_heldout


def test_patterned_base_scenes_never_wear_a_concepts_pattern_and_always_name_it():
    from lifelong_diffusion.world.pretrain import CONCEPT_PATTERNS, PretrainConfig, caption_batch
    from lifelong_diffusion.world.render import base_scenes

    scenes = base_scenes(2000, seed=3, spread=0.3, pattern_fraction=0.3, excluded_patterns=CONCEPT_PATTERNS)
    patterned = [s for s in scenes if s.pattern]
    assert 0.25 < len(patterned) / len(scenes) < 0.35
    assert not {(s.shape, s.pattern) for s in patterned} & CONCEPT_PATTERNS
    assert {s.pattern for s in patterned} == set(PATTERNS) and ("star", "stripes") in CONCEPT_PATTERNS
    # No patterns asked for: exactly the plain scenes base_dataset renders.
    assert [caption(s) for s in base_scenes(50, seed=3)] == [t for _, t in base_dataset(50, seed=3)]
    texts = caption_batch(patterned[:300], np.random.default_rng(0), PretrainConfig(partial_caption_prob=0.5))
    # Every non-empty caption of a patterned object names its pattern, partial ones too.
    assert all(f"{s.pattern_color} {s.pattern}" in t for s, t in zip(patterned, texts) if t)
    assert sum(t != caption(s) and t != "" for s, t in zip(patterned, texts)) > 100


def test_sample_scene_keeps_fixed_attributes():
    rng = np.random.default_rng(0)
    s = sample_scene(rng, shape="star", pattern="dots")
    assert s.shape == "star" and s.pattern == "dots" and s.pattern_color not in (None, s.color)
    heldout_color, heldout_shape = next(iter(HELDOUT_COMBOS))
    s = sample_scene(rng, shape=heldout_shape, color=heldout_color)
    assert (s.color, s.shape) == (heldout_color, heldout_shape)


def test_concept_definitions_are_valid():
    assert len(CONCEPTS) >= 10
    assert len({c.name for c in CONCEPTS}) == len(CONCEPTS)
    assert len({c.token for c in CONCEPTS}) == len(CONCEPTS)
    assert len({(c.shape, c.color, c.pattern, c.pattern_color) for c in CONCEPTS}) == len(CONCEPTS)
    assert all(TOKEN_RE.match(c.token) for c in CONCEPTS)
    assert {c.pattern for c in CONCEPTS} == set(PATTERNS)
    assert len({c.shape for c in CONCEPTS}) >= 5
    assert not {(c.color, c.shape) for c in CONCEPTS} & HELDOUT_COMBOS
    sequence = [concept_by_name(n) for n in DEFAULT_SEQUENCE]
    assert len(sequence) == 5 and len({c.shape for c in sequence}) == 5
    # the long benchmark sequence continues the default one with distinct concepts
    assert len(set(LONG_SEQUENCE)) == len(LONG_SEQUENCE) >= 10
    assert LONG_SEQUENCE[:5] == DEFAULT_SEQUENCE


def test_concept_by_name_lists_valid_names():
    assert concept_by_name("striped-star").token == "<c1>"
    with pytest.raises(KeyError, match="striped-star"):
        concept_by_name("no-such-concept")


def test_concept_images_are_deterministic_and_varied():
    spec = concept_by_name("striped-star")
    a = render_concept_images(spec, n_images=5, seed=0)
    b = render_concept_images(spec, n_images=5, seed=0)
    c = render_concept_images(spec, n_images=5, seed=1)
    assert all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(a, b))
    assert any(not np.array_equal(pixels(x), pixels(y)) for x, y in zip(a, c))
    assert len({tuple(pixels(im)[0, 0]) for im in a}) == len(BACKGROUNDS)


def test_every_pattern_has_a_period_the_latents_can_hold():
    from lifelong_diffusion.world.render import PATTERN_PERIODS

    assert set(PATTERN_PERIODS) == set(PATTERNS)
    # at least 3.5 cells of the 16x16 latents per period, and checks (two-way) coarser still
    assert all(p * 16 >= 3.5 for p in PATTERN_PERIODS.values())
    assert PATTERN_PERIODS["checks"] > PATTERN_PERIODS["stripes"]


def test_concept_photos_are_framed_like_the_base_training_data():
    """Concept photos use the base's own placement spread, so their objects sit no further off
    centre than the objects the base learnt to draw (full spread lost the concept's outline)."""
    from lifelong_diffusion.world.concepts import concept_scenes
    from lifelong_diffusion.world.pretrain import PretrainConfig

    spread = PretrainConfig().position_spread
    rng = np.random.default_rng(0)
    base_reach = max(max(abs(s.cx - 0.5), abs(s.cy - 0.5)) for s in
                     (sample_scene(rng, spread=spread) for _ in range(500)))
    for spec in CONCEPTS:
        for seed in (0, 1):
            scenes = concept_scenes(spec, 5, seed)
            assert all(max(abs(s.cx - 0.5), abs(s.cy - 0.5)) <= base_reach + 1e-6 for s in scenes)
            assert {(s.shape, s.color, s.pattern, s.pattern_color) for s in scenes} == {
                (spec.shape, spec.color, spec.pattern, spec.pattern_color)}
    wide = concept_scenes(CONCEPTS[0], 5, 0, spread=1.0)
    assert max(abs(s.cx - 0.5) for s in wide) > base_reach  # the spread argument is honoured


def test_write_concept_folder_writes_images_and_yaml(tmp_path):
    spec = concept_by_name("dotted-heart")
    folder = write_concept_folder(spec, tmp_path, n_images=5, seed=0)
    assert folder == tmp_path / "dotted-heart"
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == [f"{i:02d}.png" for i in range(5)]
    expected = render_concept_images(spec, n_images=5, seed=0)
    for name, want in zip(pngs, expected):
        with Image.open(folder / name) as im:
            assert im.mode == "RGB" and im.size == (64, 64)
            assert np.array_equal(pixels(im), pixels(want))
    meta = yaml.safe_load((folder / "concept.yaml").read_text())
    assert meta == {
        "token": "<c2>",
        "class_word": "heart",
        "description": "a red heart with yellow dots",
        "world": {"shape": "heart", "color": "red", "pattern": "dots", "pattern_color": "yellow"},
    }
    # Rewriting replaces the folder and leaves no staging folders behind.
    write_concept_folder(spec, tmp_path, n_images=3, seed=1)
    assert sorted(p.name for p in folder.glob("*.png")) == ["00.png", "01.png", "02.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["dotted-heart"]
