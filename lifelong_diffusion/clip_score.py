"""CLIP-I / CLIP-T scoring with open_clip.

The model is named like any open_clip model (`ViT-B-32` with a local weights file for real
runs). The project registers its own small configs (clip_configs/) so open_clip's own
`create_model_and_transforms` builds them; with no weights file the model is randomly
initialised and its scores are flagged as not meaningful.
"""
from __future__ import annotations

from pathlib import Path
from statistics import mean

import open_clip
import torch
from PIL import Image

open_clip.add_model_config(Path(__file__).parent / "clip_configs")


class ClipScorer:
    def __init__(self, model_name: str, weights: str | None, device: str = "cpu", seed: int = 0):
        if weights is not None and not Path(weights).exists():
            raise FileNotFoundError(f"evaluate.clip_weights: {weights} does not exist; point it "
                                    "at a local open_clip weights file or set it to null.")
        torch.manual_seed(seed)  # a random-init evaluator must still be the same every run
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=weights, device=device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device
        self.meaningful = weights is not None

    @torch.no_grad()
    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        batch = torch.stack([self.preprocess(img) for img in images]).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_image(batch).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def clip_i_samples(self, generated: list[Image.Image], references: list[Image.Image]) -> list[float]:
        """Per generated image, its mean cosine similarity to the references."""
        return (self.image_features(generated) @ self.image_features(references).T).mean(dim=1).tolist()

    def clip_t_samples(self, generated: list[Image.Image], text: str) -> list[float]:
        """Per generated image, its cosine similarity to the text."""
        return (self.image_features(generated) @ self.text_features([text]).T)[:, 0].tolist()

    def clip_i(self, generated: list[Image.Image], references: list[Image.Image]) -> float:
        """Mean cosine similarity over all (generated, reference) pairs."""
        return mean(self.clip_i_samples(generated, references))

    def clip_t(self, generated: list[Image.Image], text: str) -> float:
        return mean(self.clip_t_samples(generated, text))
