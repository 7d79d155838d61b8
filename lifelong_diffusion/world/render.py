"""Procedural world of captioned shape images.

The world is deliberately tiny and fully known: a base model pretrained on it can
describe plain scenes ("a red star on a gray background") and, as a real base knows
"striped" and "dotted", patterned ones ("a red heart with blue stripes ..."), except
the shape x pattern pairs of the personal concepts learned later: no base caption
ever names a striped star. Everything is seeded, so datasets, concept photos and
evaluations are reproducible pixel for pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

# Drawing at 4x and box-filtering down gives antialiased edges without
# the ringing a Lanczos filter adds to flat colours.
SUPERSAMPLE = 4
# Pattern period as a fraction of the image side: about 7 px at 32 px, the
# smallest period that survives the training resolution (3.5 cells of the 16x16 latents).
# Checks alternate in two directions, so at that period a cell is 1.75 latent cells and a
# LoRA drew red/yellow checks as their average, orange (checked-diamond: pattern 0/16 after
# 150 and 0.13 after 600 steps); at 10 px they are learnt like the others
# (reports/world_pretraining.md, session 6). Dots and rings keep 7 px: wider, a small
# object holds only their centre disc and the two become one pattern.
PATTERN_PERIODS = {"stripes": 7 / 32, "dots": 7 / 32, "checks": 10 / 32, "rings": 7 / 32}
SIZE_RANGE = (0.45, 0.8)
MAX_ROTATION = 15.0  # degrees; small, so shapes keep their canonical look

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "cyan": (30, 200, 210),
    "blue": (40, 80, 220),
    "purple": (140, 50, 190),
    "pink": (245, 120, 190),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "beige": (225, 205, 165),
}

# Patterns; a base caption names one only on shapes no personal concept wears it on.
PATTERNS = ("stripes", "dots", "checks", "rings")


def _regular(n: int, phase: float, inner: float | None = None) -> np.ndarray:
    """Vertices of a regular n-gon, or of an n-pointed star when `inner` is set."""
    k = 2 * n if inner else n
    angles = phase + np.arange(k) * 2 * np.pi / k
    radii = np.where(np.arange(k) % 2 == 0, 1.0, inner) if inner else np.ones(k)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _heart() -> np.ndarray:
    """Classic parametric heart, flipped because image y points down."""
    t = np.linspace(0, 2 * np.pi, 128, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y], axis=1)


def _fit(points: np.ndarray) -> np.ndarray:
    """Centre the bounding box and scale it into [-1, 1] so `Scene.size` means the same for every shape."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (points - (lo + hi) / 2) / ((hi - lo).max() / 2)


_ARM = 0.34  # half-width of the cross arms
_CROSS = np.array(
    [(-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM), (1, _ARM), (_ARM, _ARM),
     (_ARM, 1), (-_ARM, 1), (-_ARM, _ARM), (-1, _ARM), (-1, -_ARM), (-_ARM, -_ARM)],
    dtype=float,
)

# Unit outlines in [-1, 1]; the square is shrunk so its area matches the circle's.
_OUTLINES: dict[str, np.ndarray] = {
    "circle": _regular(96, 0.0),
    "square": 0.86 * _fit(_regular(4, np.pi / 4)),
    "triangle": _fit(_regular(3, -np.pi / 2)),
    "star": _fit(_regular(5, -np.pi / 2, inner=0.5)),
    "heart": _fit(_heart()),
    "cross": _CROSS,
    "diamond": np.array([(0, -1), (0.72, 0), (0, 1), (-0.72, 0)], dtype=float),
    "hexagon": _fit(_regular(6, 0.0)),
}
SHAPES = tuple(_OUTLINES)

# (color, shape) pairs never shown in pretraining, to test compositional
# generalization; each colour and each shape appears at most once.
HELDOUT_COMBOS = frozenset({
    ("blue", "heart"),
    ("pink", "star"),
    ("orange", "circle"),
    ("cyan", "square"),
    ("yellow", "cross"),
    ("green", "hexagon"),
})


@dataclass(frozen=True)
class Scene:
    """One object on a flat background; the full ground truth of an image."""

    shape: str
    color: str
    background: str
    pattern: str | None = None
    pattern_color: str | None = None
    cx: float = 0.5
    cy: float = 0.5
    size: float = 0.6
    rotation: float = 0.0

    def __post_init__(self) -> None:
        _check(self.shape, SHAPES, "shape")
        _check(self.color, COLORS, "color")
        _check(self.background, BACKGROUNDS, "background")
        if self.pattern is None:
            if self.pattern_color is not None:
                raise ValueError("pattern_color given without a pattern")
        else:
            _check(self.pattern, PATTERNS, "pattern")
            _check(self.pattern_color, COLORS, "pattern_color")
            if self.pattern_color == self.color:
                raise ValueError("pattern_color must differ from color, or the pattern is invisible")
        if not 0 < self.size <= 1:
            raise ValueError(f"size must be in (0, 1], got {self.size}")


def _check(value: object, valid, what: str) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _outline(shape: str, rotation: float) -> np.ndarray:
    """Unit outline rotated clockwise on screen by `rotation` degrees."""
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    return _OUTLINES[shape] @ np.array([[c, s], [-s, c]])


def _pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Where pattern_color goes, in shape-local coordinates centred on the shape."""
    half = period / 2
    if pattern == "stripes":
        return ((u + v) / math.sqrt(2)) % period < half
    if pattern == "dots":
        du, dv = (u + half) % period - half, (v + half) % period - half
        return np.hypot(du, dv) < 0.3 * period
    if pattern == "checks":
        return (np.floor(u / half) + np.floor(v / half)) % 2 == 0
    # rings: a plain disc in the middle, then alternating bands
    return (np.hypot(u, v) - half) % period < half


def _fill(scene: Scene, side: int) -> Image.Image:
    """The shape's paint: flat colour, or the pattern anchored to (and turning with) the shape."""
    if scene.pattern is None:
        return Image.new("RGB", (side, side), COLORS[scene.color])
    pixel = np.arange(side) + 0.5
    x = pixel[None, :] - scene.cx * side
    y = pixel[:, None] - scene.cy * side
    c, s = math.cos(math.radians(scene.rotation)), math.sin(math.radians(scene.rotation))
    u, v = c * x + s * y, -s * x + c * y
    on = _pattern_mask(scene.pattern, u, v, PATTERN_PERIODS[scene.pattern] * side)
    paint = np.where(on[..., None], COLORS[scene.pattern_color], COLORS[scene.color])
    return Image.fromarray(paint.astype(np.uint8), "RGB")


def render(scene: Scene, size: int = 32) -> Image.Image:
    """Draw `scene` as a `size` x `size` RGB image."""
    side = size * SUPERSAMPLE
    points = _outline(scene.shape, scene.rotation) * (scene.size * side / 2)
    points += (scene.cx * side, scene.cy * side)
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in points], fill=255)
    canvas = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    canvas.paste(_fill(scene, side), mask=mask)
    return canvas.resize((size, size), Image.Resampling.BOX)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(shape: str, color: str | None, pattern: str | None = None,
                  pattern_color: str | None = None) -> str:
    """'a red star', 'a red star with blue stripes' for a patterned one; without a colour
    'a star' or 'a star with blue stripes'."""
    phrase = f"{_article(color)} {color} {shape}" if color else f"{_article(shape)} {shape}"
    return phrase if pattern is None else f"{phrase} with {pattern_color} {pattern}"


def caption(scene: Scene) -> str:
    """The text the model sees, e.g. 'a red star on a gray background'."""
    obj = object_phrase(scene.shape, scene.color, scene.pattern, scene.pattern_color)
    return f"{obj} on {_article(scene.background)} {scene.background} background"


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def sample_scene(
    rng: np.random.Generator,
    *,
    shape: str | None = None,
    color: str | None = None,
    background: str | None = None,
    pattern: str | None = None,
    pattern_color: str | None = None,
    include_heldout: bool = False,
    spread: float = 1.0,
) -> Scene:
    """A random scene; any attribute given is kept fixed.

    Held-out (color, shape) pairs are skipped unless `include_heldout`, except
    when the caller fixes both, which is an explicit request for that pair.
    A pattern without a pattern_color gets a random colour other than `color`.
    `spread` scales how far the centre may wander from the middle (1: anywhere the
    object fits, 0: always centred).
    """
    combos = [(c, s) for s in SHAPES for c in COLORS if shape in (None, s) and color in (None, c)]
    if not include_heldout and (shape is None or color is None):
        combos = [pair for pair in combos if pair not in HELDOUT_COMBOS]
    if not combos:
        raise ValueError(f"no (color, shape) pair matches color={color!r}, shape={shape!r}")
    color, shape = _pick(rng, combos)
    background = _pick(rng, [background] if background else list(BACKGROUNDS))
    if pattern is not None and pattern_color is None:
        pattern_color = _pick(rng, [c for c in COLORS if c != color])
    size = float(rng.uniform(*SIZE_RANGE))
    rotation = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    # Keep the rotated outline inside the frame.
    reach = np.abs(_outline(shape, rotation)).max(axis=0) * size / 2
    cx, cy = (0.5 + spread * (float(rng.uniform(r, 1 - r)) - 0.5) for r in reach)
    return Scene(shape, color, background, pattern, pattern_color, cx, cy, size, rotation)


def base_scenes(n: int, seed: int, include_heldout: bool = False, spread: float = 1.0,
                pattern_fraction: float = 0.0,
                excluded_patterns: frozenset[tuple[str, str]] = frozenset()) -> list[Scene]:
    """`n` pretraining scenes; a `pattern_fraction` share get a random pattern and pattern
    colour, never one whose (shape, pattern) pair is in `excluded_patterns`. A prefix of a
    longer run with the same seed; with no patterns, the same scenes as before patterns existed."""
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        scene = sample_scene(rng, include_heldout=include_heldout, spread=spread)
        if pattern_fraction and rng.random() < pattern_fraction:
            allowed = [p for p in PATTERNS if (scene.shape, p) not in excluded_patterns]
            if allowed:
                scene = replace(scene, pattern=_pick(rng, allowed),
                                pattern_color=_pick(rng, [c for c in COLORS if c != scene.color]))
        scenes.append(scene)
    return scenes


def base_dataset(n: int, seed: int, size: int = 32, include_heldout: bool = False,
                 spread: float = 1.0) -> list[tuple[Image.Image, str]]:
    """`n` plain (image, caption) pairs (base_scenes without patterns)."""
    return [(render(scene, size), caption(scene))
            for scene in base_scenes(n, seed, include_heldout, spread)]
