"""The world's CLIP: a tiny open_clip model trained contrastively on world images and captions.

A real CLIP has seen everything; our base generator has not. So the evaluator is trained
on the whole world, patterns and held-out colour x shape pairs included, with captions
that name any subset of an object's attributes ("a star", "a photo of a red star with
blue stripes on a gray background"). It is an ordinary open_clip model: after
`open_clip.add_model_config` (done by `lifelong_diffusion.clip_score`) its saved weights
load with `open_clip.create_model_and_transforms(WORLD_CLIP, pretrained=<file>)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from .. import clip_score  # noqa: F401  (registers the project's open_clip configs)
from .attributes import augment
from .render import COLORS, PATTERNS, SHAPES, Scene, _article, render, sample_scene

WORLD_CLIP = "ld-world-clip"
SIZE = 32


def describe(scene: Scene, rng: np.random.Generator) -> str:
    """A caption naming the shape and a random subset of the other attributes.

    Evaluation prompts name only the class word ("a photo of a star"), so the text side
    must learn each word on its own, not just full captions.
    """
    words = [scene.shape]
    if rng.random() < 0.7:
        words.insert(0, scene.color)
    phrase = f"{_article(words[0])} {' '.join(words)}"
    if scene.pattern and rng.random() < 0.7:
        phrase += f" with {scene.pattern_color} {scene.pattern}"
    if rng.random() < 0.5:
        phrase += f" on {_article(scene.background)} {scene.background} background"
    return f"a photo of {phrase}" if rng.random() < 0.5 else phrase


def render_pool(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, list[Scene]]:
    """`n` fresh scenes (half patterned, held-out pairs included) as (N, 3, 32, 32) in [0, 1]."""
    scenes = [sample_scene(rng, include_heldout=True,
                           pattern=PATTERNS[rng.integers(len(PATTERNS))] if rng.random() < 0.5 else None)
              for _ in range(n)]
    images = np.stack([np.asarray(render(s, SIZE)) for s in scenes])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, scenes


def normalize(model, x: torch.Tensor) -> torch.Tensor:
    """What the model's own preprocess does after ToTensor (images are already 32x32)."""
    mean = torch.tensor(model.visual.image_mean or open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std or open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def contrastive_step(model, tokenizer, opt, x: torch.Tensor, texts: list[str]) -> float:
    """Symmetric InfoNCE; identical captions in a batch count as positives of each other."""
    img = F.normalize(model.encode_image(normalize(model, x)), dim=-1)
    txt = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.T
    same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float32)
    target = same / same.sum(1, keepdim=True)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, 4.6052)  # CLIP's cap: temperature >= 0.01
    return loss.item()


def train_world_clip(seed: int = 0, steps: int = 1500, batch_size: int = 128, lr: float = 1e-3,
                     pool_size: int = 20000, log=None):
    """Train `ld-world-clip` on a pool of fresh renders (blur/noise per draw, fresh caption per draw)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 11])
    pool, scenes = render_pool(pool_size, rng)
    model = open_clip.create_model(WORLD_CLIP)
    tokenizer = open_clip.get_tokenizer(WORLD_CLIP)
    # The 49k-row token table stays at its random init: the world uses ~60 words, and its
    # dense AdamW update would cost a sixth of every step.
    model.token_embedding.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    model.train()
    for step in range(steps):
        pick = torch.randint(0, pool_size, (batch_size,), generator=gen).tolist()
        loss = contrastive_step(model, tokenizer, opt, augment(pool[pick], gen),
                                [describe(scenes[i], rng) for i in pick])
        sched.step()
        if log and step % 200 == 0:
            log(f"clip step {step} loss {loss:.3f}")
    return model.eval()


@torch.no_grad()
def zero_shot_accuracy(model, n: int = 1000, seed: int = 12345) -> dict[str, float]:
    """Zero-shot accuracy on fresh renders, prompted the way evaluation prompts
    ("a photo of a {shape}", "a photo of a {color} object"..., "... with stripes")."""
    tokenizer = open_clip.get_tokenizer(WORLD_CLIP)
    x, scenes = render_pool(n, np.random.default_rng([seed, 5]))
    img = F.normalize(model.eval().encode_image(normalize(model, x)), dim=-1)
    questions = {
        "shape": (SHAPES, lambda s: s.shape, "a photo of {} {}", lambda w: (_article(w), w)),
        "color": (tuple(COLORS), lambda s: s.color, "a photo of {} {} object", lambda w: (_article(w), w)),
    }
    out = {}
    for name, (options, truth, template, fill) in questions.items():
        txt = F.normalize(model.encode_text(tokenizer([template.format(*fill(o)) for o in options])), dim=-1)
        guess = (img @ txt.T).argmax(-1)
        out[name] = float(np.mean([options[g] == truth(s) for g, s in zip(guess.tolist(), scenes)]))
    return out


def save_world_clip(model, path: Path) -> Path:
    """Safetensors file that open_clip's `pretrained=` argument loads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
