"""Exact attribute read-out for world images: a tiny CNN that names shape, colour and pattern.

Generated images are scored by what they show, not by a similarity score: the
classifier is trained on fresh renders of the world (patterned and plain, held-out
colour x shape pairs included, so it does not inherit the base model's blind
spots) with mild blur and noise, so the soft edges a tiny diffusion model draws
do not change its answer, and partly on the base VAE's reconstructions of them: every
generated image leaves through that decoder, which mixes a 2 px dot with the paint around it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from .render import COLORS, PATTERNS, SHAPES, render, sample_scene

SIZE = 32
PATTERN_LABELS: tuple[str | None, ...] = (None, *PATTERNS)
# The second colour of a patterned object (None: plain). With both colours read, a concept's
# colour scheme is judged as a pair, so a 50/50 pattern (stripes, checks) whose base and
# pattern colour are hard to tell apart still counts when both colours are right.
PATTERN_COLOR_LABELS: tuple[str | None, ...] = (None, *COLORS)
# What each head names, in logit order: the one table the heads, the labels and predict read.
LABELS: dict[str, tuple] = {"shape": SHAPES, "color": tuple(COLORS), "pattern": PATTERN_LABELS,
                            "pattern_color": PATTERN_COLOR_LABELS}
PATTERN_FRACTION = 0.5  # half the renders carry a pattern, so "none" is not the easy default


class AttributeNet(nn.Module):
    """Three conv stages (full resolution first, so 7 px pattern periods are seen) and one
    linear head per attribute; ~70k parameters, a few ms per image on one core."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
            )

        self.features = nn.Sequential(
            stage(3, width), nn.MaxPool2d(2),
            stage(width, 2 * width), nn.MaxPool2d(2),
            stage(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(4 * width, len(names)) for name, names in LABELS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """`x`: (N, 3, 32, 32) in [0, 1]; returns logits per attribute."""
        h = self.features(x * 2 - 1)
        return {name: head(h) for name, head in self.heads.items()}


def render_labelled(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`n` fresh renders with their labels; every colour x shape pair, half of them patterned."""
    images, labels = [], {name: [] for name in LABELS}
    for _ in range(n):
        pattern = PATTERNS[rng.integers(len(PATTERNS))] if rng.random() < PATTERN_FRACTION else None
        scene = sample_scene(rng, pattern=pattern, include_heldout=True)
        images.append(np.asarray(render(scene, SIZE)))
        for name, names in LABELS.items():
            labels[name].append(names.index(getattr(scene, name)))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x, {k: torch.tensor(v) for k, v in labels.items()}


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random partial blur plus pixel noise: the artefacts generated images have, not new content."""
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(x.shape[0], 1, 1, 1, generator=gen) * 0.7
    x = (1 - mix) * x + mix * blurred
    sigma = torch.rand(x.shape[0], 1, 1, 1, generator=gen) * 0.05
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def _train_step(model: AttributeNet, opt: torch.optim.Optimizer, x: torch.Tensor,
                labels: dict[str, torch.Tensor]) -> float:
    logits = model(x)
    loss = sum(F.cross_entropy(logits[k], labels[k]) for k in labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def train_attribute_classifier(seed: int = 0, steps: int = 2500, batch_size: int = 64,
                               lr: float = 3e-3, pool_size: int = 16000, vae=None,
                               vae_fraction: float = 0.5) -> AttributeNet:
    """Train on a pool of fresh renders (rendering costs about as much as a step, so the pool
    is drawn once) with random blur/noise per draw; one-cycle lr. With `vae` (the base's
    AutoencoderKL), a `vae_fraction` share of the pool is its reconstructions, labelled with
    what was rendered: on renders alone the classifier read the yellow dots of every generated
    dotted hexagon as orange (colour scheme 0/16) while the samples showed yellow dots."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    pool, pool_labels = render_labelled(pool_size, np.random.default_rng([seed, 7]))
    n = int(vae_fraction * pool_size) if vae is not None else 0
    if n:
        pool[:n] = vae_roundtrip(vae, pool[:n])
    model = AttributeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, pool_size, (batch_size,), generator=gen)
        _train_step(model, opt, augment(pool[pick], gen), {k: v[pick] for k, v in pool_labels.items()})
        sched.step()
    return model.eval()


@torch.no_grad()
def vae_roundtrip(vae, x: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    """(N, 3, H, W) images in [0, 1] through `vae` (encoder mean, decoder), as sampling leaves them."""
    out = []
    for i in range(0, len(x), chunk):
        latents = vae.encode(x[i:i + chunk] * 2 - 1).latent_dist.mean
        out.append(((vae.decode(latents).sample + 1) / 2).clamp(0, 1))
    return torch.cat(out)


def to_tensor(images) -> torch.Tensor:
    """PIL images, or a (N, 3, H, W) tensor in [0, 1], as a (N, 3, 32, 32) float batch."""
    if isinstance(images, torch.Tensor):
        x = images.float()
    else:
        arrays = [np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BOX))
                  for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    if x.shape[-1] != SIZE:
        x = F.interpolate(x, size=(SIZE, SIZE), mode="area")
    return x


@torch.no_grad()
def predict(model: AttributeNet, images) -> list[dict]:
    """One dict per image: shape, color, pattern (None when plain) and each answer's probability."""
    logits = model.eval()(to_tensor(images))
    probs = {k: v.softmax(-1) for k, v in logits.items()}
    out = []
    for i in range(len(probs["shape"])):
        row = {}
        for k, p in probs.items():
            j = int(p[i].argmax())
            row[k] = LABELS[k][j]
            row[f"{k}_prob"] = float(p[i, j])
        out.append(row)
    return out


@torch.no_grad()
def accuracy(model: AttributeNet, n: int = 2000, seed: int = 12345, vae=None) -> dict[str, float]:
    """Accuracy per attribute on `n` fresh renders from a seed training never used (with `vae`:
    on its reconstructions of them, what a perfect generator's samples would look like)."""
    x, labels = render_labelled(n, np.random.default_rng([seed, 99]))
    logits = model.eval()(x if vae is None else vae_roundtrip(vae, x))
    return {k: float((logits[k].argmax(-1) == labels[k]).float().mean()) for k in labels}


def save(model: AttributeNet, path: Path) -> None:
    save_file(model.state_dict(), str(path))


def load(path: Path) -> AttributeNet:
    """Weights written by `save` (safetensors); a clear error if the file is missing."""
    if not Path(path).exists():
        raise FileNotFoundError(f"attribute classifier {path} does not exist; train it with "
                                "`lifelong pretrain` or set evaluate.attribute_classifier to null")
    model = AttributeNet()
    model.load_state_dict(load_file(str(path)))
    return model.eval()
