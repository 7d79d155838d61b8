"""Validate a user's concept folder and write a normalized, hashed copy of it.

A concept is ``data/concepts/<name>/`` with 3-10 photos and a ``concept.yaml``.
Users make mistakes (stray files, broken downloads, the same photo twice, a
token another concept already uses), and training on such data fails late or
silently, so every problem is reported up front, all at once, each naming the
file and the fix. Images are normalized (upright, RGB on white, centre square,
fixed resolution) so later stages never see raw user files, and hashed so
results can be traced back to the exact inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from types import MappingProxyType
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageOps

from lifelong_diffusion.fileio import atomic_dir, sha256_file

CONCEPT_FILE = "concept.yaml"
MANIFEST_FILE = "manifest.json"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})

# fullmatch patterns: "$" in re.match would also accept a trailing newline.
CONCEPT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # folder, stage and run names
HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # greyscale modes over 8 bits
_TOKEN_RE = re.compile(r"<[a-z0-9_-]+>")
_CLASS_WORD_RE = re.compile(r"[A-Za-z]+(?:[ -][A-Za-z]+)*")
_KNOWN_KEYS = ("token", "class_word", "prompts")
_PROMPT_FIELDS = frozenset({"token", "class_word"})
_NO_TOKENS: Mapping[str, str] = MappingProxyType({})


class ConceptDataError(ValueError):
    """The user's concept data is unusable; ``problems`` has one line per issue.

    Each line names the offending file by full path and says how to fix it, so
    the message can be shown to the user as is.
    """

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = "\n".join(f"- {problem}" for problem in self.problems)
            message = f"{len(self.problems)} problems:\n{lines}"
        super().__init__(message)


@dataclass(frozen=True)
class _NormalizedImage:
    """A decoded source image, already reduced to the output square."""

    source: Path
    source_sha256: str
    pixel_sha256: str
    size: tuple[int, int]
    square: Image.Image


def read_concept_yaml(path: Path) -> dict[str, Any]:
    """Read and validate a ``concept.yaml`` without touching the images.

    Lets other code (e.g. building ``taken_tokens`` for a sequence) check the
    tokens of other concepts cheaply. Returns ``{"token", "class_word",
    "prompts" (list or None), "extra" (all other keys, verbatim)}``; raises
    ConceptDataError listing every problem in the file.
    """
    path = Path(path).absolute()
    raw = _load_yaml_mapping(path)
    extra = {key: value for key, value in raw.items() if key not in _KNOWN_KEYS}
    problems = [
        *_token_problems(path, raw.get("token")),
        *_class_word_problems(path, raw.get("class_word")),
    ]
    if not problems:
        problems = _token_is_class_word_problems(path, raw["token"], raw["class_word"])
    problems += [*_prompt_problems(path, raw.get("prompts")), *_extra_problems(path, extra)]
    if problems:
        raise ConceptDataError(*problems)
    return {
        "token": raw["token"],
        "class_word": raw["class_word"],
        "prompts": raw.get("prompts"),
        "extra": extra,
    }


def ingest_concept(
    concept_dir: Path,
    out_dir: Path,
    *,
    resolution: int,
    min_size: int,
    min_images: int = 3,
    max_images: int = 10,
    taken_tokens: Mapping[str, str] = _NO_TOKENS,
) -> dict[str, Any]:
    """Validate ``concept_dir`` and write its processed copy to ``out_dir``.

    ``taken_tokens`` maps token -> name of another concept already using it
    (an entry naming this concept itself is ignored, so re-ingesting works).
    Everything is validated before anything is written, and the output is
    built in a temporary sibling folder that replaces ``out_dir`` only when
    complete, so on any error a previous ``out_dir`` stays byte-identical.
    Returns the manifest (also written as ``out_dir/manifest.json``).
    """
    # abspath (not resolve) folds ".." but keeps symlinked folder names as given.
    concept_dir, out_dir = Path(os.path.abspath(concept_dir)), Path(os.path.abspath(out_dir))
    if out_dir.is_relative_to(concept_dir) or concept_dir.is_relative_to(out_dir):
        # replacing out_dir would delete the user's originals
        raise ValueError(f"out_dir {out_dir} must not overlap concept_dir {concept_dir}")
    config, images = check_concept(concept_dir, resolution=resolution, min_size=min_size,
                                   min_images=min_images, max_images=max_images,
                                   taken_tokens=taken_tokens)
    with atomic_dir(out_dir) as tmp:
        return _write_processed(tmp, concept_dir.name, config, images, resolution)


def check_concept(
    concept_dir: Path,
    *,
    resolution: int,
    min_size: int,
    min_images: int = 3,
    max_images: int = 10,
    taken_tokens: Mapping[str, str] = _NO_TOKENS,
) -> tuple[dict[str, Any], list]:
    """Every check of ingest_concept, writing nothing: (config, images), or a
    ConceptDataError listing all problems. `lifelong run` calls it for every concept
    before DVC touches any output."""
    concept_dir = Path(os.path.abspath(concept_dir))
    check_settings(resolution, min_size, min_images, max_images)
    if not concept_dir.is_dir():
        raise ConceptDataError(
            f"{concept_dir}: concept folder does not exist; fix: create it with a "
            f"{CONCEPT_FILE} and {min_images}-{max_images} images"
        )
    config, config_problems = _read_config(concept_dir, taken_tokens)
    paths, listing_problems = _list_images(concept_dir)
    images, image_problems = _read_images(paths, resolution, min_size)
    problems = [
        *_name_problems(concept_dir),
        *config_problems,
        *listing_problems,
        *image_problems,
        *_duplicate_problems(images),
        *_count_problems(concept_dir, len(paths), min_images, max_images),
    ]
    if problems:
        raise ConceptDataError(*problems)
    return config, images


def check_settings(resolution: int, min_size: int, min_images: int = 3, max_images: int = 10) -> None:
    """params.yaml's `ingest` values (a ValueError or TypeError: `lifelong run` names the file)."""
    values = {"resolution": resolution, "min_size": min_size, "min_images": min_images,
              "max_images": max_images}
    wrong = [k for k, v in values.items() if not isinstance(v, int) or isinstance(v, bool)]
    if wrong:
        raise TypeError(f"{', '.join(wrong)} must be whole numbers, got "
                        + ", ".join(f"{k}={values[k]!r}" for k in wrong))
    if resolution < 1 or min_size < 1 or not 1 <= min_images <= max_images:
        raise ValueError(
            f"need resolution >= 1, min_size >= 1 and 1 <= min_images <= max_images, got "
            f"{resolution=}, {min_size=}, {min_images=}, {max_images=}"
        )


# --- concept.yaml ---------------------------------------------------------


def _load_yaml_mapping(path: Path) -> dict[Any, Any]:
    """Parse ``path`` into a mapping, or raise one ConceptDataError saying why not."""
    if not path.is_file():
        raise ConceptDataError(
            f"{path}: missing; fix: create it with at least a token (e.g. \"<my-dog>\") "
            "and a class_word (e.g. dog)"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConceptDataError(
            f"{path}: cannot be read as UTF-8 YAML ({exc}); fix: correct the syntax at the "
            "reported position (quote values that contain ':' or '<')"
        ) from exc
    if not isinstance(raw, dict):
        raise ConceptDataError(
            f"{path}: must be a mapping of keys to values, got {type(raw).__name__}; fix: "
            "write 'token: \"<my-dog>\"' and 'class_word: dog' on separate lines"
        )
    return raw


def _token_problems(path: Path, token: Any) -> list[str]:
    if token is None:
        return [f"{path}: missing required key 'token'; fix: add a line like token: \"<my-dog>\""]
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        return [
            f"{path}: token {token!r} is not lowercase letters, digits, '_' or '-' inside angle "
            "brackets; fix: write it like token: \"<my-dog>\""
        ]
    return []


def _class_word_problems(path: Path, class_word: Any) -> list[str]:
    if class_word is None:
        return [f"{path}: missing required key 'class_word'; fix: add a line like class_word: dog"]
    if not isinstance(class_word, str) or not _CLASS_WORD_RE.fullmatch(class_word):
        return [
            f"{path}: class_word {class_word!r} is not a plain word (letters, optionally "
            "separated by single spaces or hyphens); fix: name the general category, e.g. "
            "class_word: dog"
        ]
    return []


def _token_is_class_word_problems(path: Path, token: str, class_word: str) -> list[str]:
    """The token must differ from the class word, else the model cannot tell the
    specific concept from its class (compared as "<golden-retriever>" vs
    "golden retriever")."""
    if token[1:-1] != class_word.lower().replace(" ", "-"):
        return []
    return [
        f"{path}: token {token!r} is just the class word {class_word!r}; fix: choose a "
        "distinctive token such as \"<my-dog>\""
    ]


def _prompt_problems(path: Path, prompts: Any) -> list[str]:
    if prompts is None:
        return []
    if not isinstance(prompts, list) or not prompts:
        return [
            f"{path}: prompts must be a non-empty list of strings; fix: write one line "
            "'- \"a photo of {token} {class_word}\"' per prompt, or remove the key"
        ]
    problems = (_template_problem(path, index, prompt) for index, prompt in enumerate(prompts))
    return [problem for problem in problems if problem is not None]


def _template_problem(path: Path, index: int, template: Any) -> str | None:
    """Parse the template's placeholders so that an escaped "{{token}}" does not
    count and unknown ones ("{name}", "{}") are caught now, not at training time."""
    where = f"{path}: prompts[{index}] {template!r}"
    fix = "fix: include {token} and use no placeholders other than {token} and {class_word}"
    if not isinstance(template, str):
        return f"{where} is not a string; {fix}"
    try:
        fields = {field for _, field, _, _ in Formatter().parse(template) if field is not None}
    except ValueError as exc:
        return f"{where} has unbalanced braces ({exc}); {fix} (write literal braces as {{{{ }}}})"
    if "token" not in fields or not fields <= _PROMPT_FIELDS:
        return f"{where} has placeholders {sorted(fields)}; {fix}"
    return None


def _extra_problems(path: Path, extra: Mapping[Any, Any]) -> list[str]:
    """Extra keys go into the JSON manifest verbatim, so they must be JSON values
    (YAML turns e.g. an unquoted 2024-05-01 into a date, which JSON cannot hold)."""
    problems = []
    for key, value in extra.items():
        try:
            json.dumps({key: value}, allow_nan=False)
        except (TypeError, ValueError):
            problems.append(
                f"{path}: value of {key!r} ({type(value).__name__}) cannot be stored in the "
                "JSON manifest; fix: quote it so it is read as text"
            )
    return problems


def _read_config(
    concept_dir: Path, taken_tokens: Mapping[str, str]
) -> tuple[dict[str, Any] | None, list[str]]:
    """Read the concept's yaml and check its token against other concepts."""
    path = concept_dir / CONCEPT_FILE
    try:
        config = read_concept_yaml(path)
    except ConceptDataError as exc:
        return None, exc.problems
    other = taken_tokens.get(config["token"])
    if other is None or other == concept_dir.name:
        return config, []
    return config, [
        f"{path}: token {config['token']!r} is already used by concept '{other}'; fix: choose "
        "a token no other concept uses"
    ]


# --- folder and images ------------------------------------------------------


def _name_problems(concept_dir: Path) -> list[str]:
    """The folder name becomes output paths and run names, so keep it path-safe."""
    if CONCEPT_NAME.fullmatch(concept_dir.name):
        return []
    return [
        f"{concept_dir}: folder name {concept_dir.name!r} is not a safe concept name; fix: "
        "rename the folder to 1-64 lowercase letters, digits, '_' or '-', starting with a "
        "letter or digit"
    ]


def _list_images(concept_dir: Path) -> tuple[list[Path], list[str]]:
    """Split the folder into image files and stray entries (hidden ones ignored).

    Stray files are errors rather than skipped: a misnamed yaml or a video the
    user meant to use should not vanish silently.
    """
    images, problems = [], []
    allowed = ", ".join(sorted(IMAGE_EXTENSIONS))
    for entry in sorted(concept_dir.iterdir()):
        if entry.name.startswith(".") or entry.name == CONCEPT_FILE:
            continue
        if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(entry)
        else:
            problems.append(
                f"{entry}: not an image ({allowed}) or {CONCEPT_FILE}; fix: remove or move it "
                "out of the concept folder"
            )
    return images, problems


def _read_images(
    paths: Sequence[Path], resolution: int, min_size: int
) -> tuple[list[_NormalizedImage], list[str]]:
    images, problems = [], []
    for path in paths:
        try:
            images.append(_read_image(path, resolution, min_size))
        except ConceptDataError as exc:
            problems.extend(exc.problems)
    return images, problems


def _read_image(path: Path, resolution: int, min_size: int) -> _NormalizedImage:
    """Decode one image and reduce it to the output square right away, so at
    most one full-size photo is in memory at a time."""
    rgb = _decode_upright_rgb(path)
    width, height = rgb.size
    if min(width, height) < min_size:
        raise ConceptDataError(
            f"{path}: {width}x{height} px is too small, the shorter side needs at least "
            f"{min_size} px; fix: use the original, higher-resolution photo or remove it"
        )
    return _NormalizedImage(
        source=path,
        source_sha256=sha256_file(path),
        pixel_sha256=hashlib.sha256(rgb.tobytes()).hexdigest(),
        size=rgb.size,
        square=_centre_square(rgb, resolution),
    )


def _decode_upright_rgb(path: Path) -> Image.Image:
    """Fully decode ``path`` (``load`` catches truncation that ``open`` misses),
    apply its EXIF orientation and flatten it to RGB."""
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    # Pillow's format plugins raise many unrelated types on malformed files
    # (OSError, SyntaxError, ValueError, struct.error, DecompressionBombError...).
    except Exception as exc:
        raise ConceptDataError(
            f"{path}: cannot be decoded as an image ({exc}); fix: re-export or re-download "
            "it, or remove it"
        ) from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """Composite transparency onto white: the colour under transparent pixels is
    arbitrary (often black), which would otherwise leak into training images."""
    if image.mode in HIGH_DEPTH:
        image = _to_8bit(image)
    if "A" not in image.getbands() and "transparency" not in image.info:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """Greyscale of more than 8 bits as 8 bits. Pillow's convert("RGB") clips a 16-bit
    image's values at 255, so a normal 16-bit PNG came out all white."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":  # float images: 0..1 by convention, else already 0..255
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
    else:  # "I;16*" is 16 bits; "I" is how Pillow often opens 16-bit PNGs too
        scale = 1 / 257 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 1.0
    return Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8), "L")


def _centre_square(image: Image.Image, resolution: int) -> Image.Image:
    """Centre-crop to a square, then resize with LANCZOS. Cropping first (rather
    than ``resize(box=...)``) keeps pixels outside the crop out of the filter."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((resolution, resolution), Image.Resampling.LANCZOS)


def _duplicate_problems(images: Sequence[_NormalizedImage]) -> list[str]:
    """Same decoded pixels (and size) means the same photo, even if re-encoded or
    stored rotated with an EXIF tag; a duplicate would silently double its weight."""
    first_seen: dict[tuple[tuple[int, int], str], Path] = {}
    problems = []
    for image in images:
        original = first_seen.setdefault((image.size, image.pixel_sha256), image.source)
        if original != image.source:
            problems.append(
                f"{image.source}: same pixels as {original}; fix: remove one of the two files"
            )
    return problems


def _count_problems(concept_dir: Path, count: int, min_images: int, max_images: int) -> list[str]:
    if count < min_images:
        return [
            f"{concept_dir}: has {count} image(s) but needs at least {min_images}; fix: add "
            "more photos of the concept"
        ]
    if count > max_images:
        return [
            f"{concept_dir}: has {count} images but at most {max_images} are allowed; fix: "
            "keep the best ones and move the rest out of the folder"
        ]
    return []


# --- output -----------------------------------------------------------------


def _write_processed(
    folder: Path,
    name: str,
    config: dict[str, Any],
    images: Sequence[_NormalizedImage],
    resolution: int,
) -> dict[str, Any]:
    """Write ``000.png, 001.png, ...`` and ``manifest.json`` into ``folder``."""
    manifest = {
        "name": name,
        "token": config["token"],
        "class_word": config["class_word"],
        "prompts": config["prompts"],
        "resolution": resolution,
        "images": [_write_png(folder, index, image) for index, image in enumerate(images)],
        "extra": config["extra"],
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False)
    (folder / MANIFEST_FILE).write_text(text + "\n", encoding="utf-8")
    return manifest


def _write_png(folder: Path, index: int, image: _NormalizedImage) -> dict[str, str]:
    file = f"{index:03d}.png"
    image.square.save(folder / file, format="PNG")
    return {
        "file": file,
        "source": image.source.name,
        "source_sha256": image.source_sha256,
        "pixel_sha256": image.pixel_sha256,
        "sha256": sha256_file(folder / file),
    }
