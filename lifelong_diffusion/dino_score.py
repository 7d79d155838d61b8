"""DINO image similarity (DreamBooth's DINO metric) with a ViT from a local folder.

The folder is one written by transformers' `save_pretrained` (e.g. facebook/dino-vits16).
An image's embedding is its CLS token, `last_hidden_state[:, 0]`, as DreamBooth uses; a
generated image's score is its mean cosine similarity to the reference photos. The interface
mirrors ClipScorer's CLIP-I (`dino_samples` ~ `clip_i_samples`) so either can score a run.
"""
from __future__ import annotations

from pathlib import Path
from statistics import mean

import torch
from PIL import Image
from torchvision import transforms
from transformers import AutoImageProcessor, AutoModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

HOW_TO_MAKE = (
    "make one on a machine with Hub access with\n"
    "  python -c \"from transformers import AutoModel; "
    "AutoModel.from_pretrained('facebook/dino-vits16').save_pretrained('models/dino-vits16')\"\n"
    "then copy it here and set `evaluate.dino_model: models/dino-vits16` in params.yaml.")


class DinoModelMissing(FileNotFoundError):
    """The DINO model folder is absent or is not a save_pretrained folder."""


class DinoScorer:
    def __init__(self, folder: str, device: str = "cpu", batch_size: int = 32):
        path = Path(folder)
        if not (path / "config.json").is_file():
            what = "does not exist" if not path.exists() else "has no config.json"
            raise DinoModelMissing(f"evaluate.dino_model: {folder} {what}; it must be a folder "
                                   f"written by transformers' save_pretrained; {HOW_TO_MAKE}")
        # local_files_only: evaluation must never reach for the Hub.
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        if (path / "preprocessor_config.json").is_file():
            processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
            self.preprocess = lambda img: processor(images=img, return_tensors="pt")["pixel_values"][0]
        else:
            # `AutoModel.save_pretrained` writes no processor: the standard DINO eval transform,
            # resize 256 / crop 224, scaled to the model's input size so small models work too.
            size = self.model.config.image_size
            self.preprocess = transforms.Compose([
                transforms.Resize(round(size * 256 / 224), interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.folder = str(folder)
        self.device = device
        self.batch_size = batch_size
        self.meaningful = True  # always trained weights: there is no random-init fallback

    @torch.no_grad()
    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        """Unit-norm CLS embeddings, one row per image."""
        rows = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(img.convert("RGB"))
                                 for img in images[start:start + self.batch_size]])
            cls = self.model(pixel_values=batch.to(self.device)).last_hidden_state[:, 0]
            rows.append(torch.nn.functional.normalize(cls.float(), dim=-1))
        return torch.cat(rows)

    def dino_samples(self, images: list[Image.Image], references: list[Image.Image]) -> list[float]:
        """Per generated image, its mean cosine similarity to the references."""
        return (self.image_features(images) @ self.image_features(references).T).mean(dim=1).tolist()

    def dino(self, images: list[Image.Image], references: list[Image.Image]) -> float:
        """Mean cosine similarity over all (generated, reference) pairs."""
        return mean(self.dino_samples(images, references))
