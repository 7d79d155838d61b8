"""`lifelong generate`: images of one prompt from a snapshot, one seed at a time so that a
progress bar can count them (each seed has its own generator, so an image depends on its seed
alone, not on the images generated with it)."""
from __future__ import annotations

import re
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from lifelong_diffusion.base_model import BaseModelError, pick_device
from lifelong_diffusion.generation import PersonalizedModel
from lifelong_diffusion.grid import image_grid
from lifelong_diffusion.snapshot import Snapshot

TOKEN = re.compile(r"<[^<>\s]+>")  # identifier tokens look like <c1>, <my-dog>
GRID_COLUMNS = 8


class PromptError(ValueError):
    """The prompt names an identifier token the model has not learnt."""


def check_prompt(snap: Snapshot, prompt: str) -> None:
    """An unknown token would be drawn as the tokenizer's pieces of "<c9>": a plausible but
    meaningless image, so it is refused instead."""
    known = {c["token"]: c["name"] for c in snap.concepts}
    unknown = [token for token in TOKEN.findall(prompt) if token not in known]
    if unknown:
        knows = ", ".join(f"{token} ({name})" for token, name in known.items())
        verb = "is not a token" if len(unknown) == 1 else "are not tokens"
        raise PromptError(f"{', '.join(unknown)} {verb} of this model; "
                          f"it knows {knows or 'none (it is the base model)'}")


def generate_images(snap: Snapshot, prompt: str, seeds: list[int], steps: int = 20,
                    guidance_scale: float = 5.0, device: str = "auto") -> list[Image.Image]:
    check_prompt(snap, prompt)
    try:
        model = PersonalizedModel(snap, pick_device(device))
    except BaseModelError as exc:
        raise BaseModelError(f"the base model of this snapshot is missing: {exc}") from exc
    return [model.generate(prompt, [seed], steps, guidance_scale)[0]
            for seed in tqdm(seeds, desc="generating", unit="image")]


def write_images(images: list[Image.Image], seeds: list[int], prompt: str, out: Path,
                 each: bool = False) -> list[Path]:
    """One image as `out`; several as a grid in `out` (rows of 8, labelled with their seeds),
    and with `each` also one file per seed, <out stem>-<seed>.png. Returns the files written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(images) == 1:
        images[0].save(out)
        return [out]
    rows = [(f"seeds {seeds[i]}-{seeds[min(i + GRID_COLUMNS, len(seeds)) - 1]}: {prompt}",
             images[i:i + GRID_COLUMNS]) for i in range(0, len(images), GRID_COLUMNS)]
    image_grid(rows).save(out)
    singles = [out.with_name(f"{out.stem}-{seed}.png") for seed in seeds] if each else []
    for image, path in zip(images, singles):
        image.save(path)
    return [out, *singles]
