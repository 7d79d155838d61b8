"""Sample grids: rows = prompts (concepts, class prompts), columns = seeds, labelled.

An evaluation's grid shows only the first evaluate.GRID_SEEDS (8) seeds of each row, so it
stays readable with 16 evaluation seeds; its scores use all of them.
"""
from __future__ import annotations

from PIL import Image, ImageDraw

LABEL_WIDTH = 220


def image_grid(rows: list[tuple[str, list[Image.Image | None]]], cell: int = 96) -> Image.Image:
    """Tiny images are upscaled with NEAREST so their pixels stay honest and visible; a None
    leaves its cell blank, so columns (references, then seeds) line up across rows."""
    n_cols = max(len(images) for _, images in rows)
    grid = Image.new("RGB", (LABEL_WIDTH + n_cols * (cell + 4), len(rows) * (cell + 4)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows):
        y = r * (cell + 4)
        draw.text((6, y + cell // 2 - 6), label[:34], fill="black")
        for c, img in enumerate(images):
            if img is not None:
                grid.paste(img.resize((cell, cell), Image.NEAREST), (LABEL_WIDTH + c * (cell + 4), y))
    return grid
