"""DinoScorer on a tiny random ViT saved with save_pretrained, with and without a
preprocessor_config.json beside it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTConfig, ViTImageProcessor, ViTModel

from lifelong_diffusion.dino_score import DinoModelMissing, DinoScorer


def _save_vit(folder, with_processor: bool):
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, image_size=32, patch_size=8)
    ViTModel(config).save_pretrained(folder)
    if with_processor:
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def _images():
    """A smooth gradient, a checkerboard and random noise: visibly different pictures."""
    y, x = np.mgrid[0:48, 0:48]
    gradient = np.stack([x * 5, y * 5, np.full_like(x, 128)], -1)
    checker = (((x // 6 + y // 6) % 2) * 255)[..., None].repeat(3, -1)
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3))
    return [Image.fromarray(a.astype(np.uint8)) for a in (gradient, checker, noise)]


@pytest.fixture(params=[False, True], ids=["default-transform", "processor-config"])
def scorer(request, tmp_path):
    return DinoScorer(_save_vit(tmp_path / "vit", request.param))


def test_scores_one_float_per_image_in_range(scorer):
    images = _images()
    scores = scorer.dino_samples(images, images[:2])
    assert len(scores) == len(images)
    assert all(isinstance(s, float) and -1.0 - 1e-6 <= s <= 1.0 + 1e-6 for s in scores)
    assert scorer.meaningful


def test_image_against_itself_scores_one_and_beats_another(scorer):
    gradient, checker, noise = _images()
    assert scorer.dino_samples([gradient, gradient], [gradient]) == pytest.approx([1.0, 1.0], abs=1e-5)
    self_score, other_score = scorer.dino_samples([checker, noise], [checker])
    assert self_score == pytest.approx(1.0, abs=1e-5)
    assert other_score < self_score - 1e-4
    # the mean over references: a copy of the image plus another picture lies between the two
    between = scorer.dino_samples([noise], [noise, checker])[0]
    assert between == pytest.approx((1.0 + other_score) / 2, abs=1e-5)
    assert scorer.dino([checker, noise], [checker]) == pytest.approx((self_score + other_score) / 2)


def test_batching_does_not_change_scores(tmp_path):
    folder = _save_vit(tmp_path / "vit", with_processor=False)
    images = _images()
    whole = DinoScorer(folder).dino_samples(images, images)
    assert DinoScorer(folder, batch_size=1).dino_samples(images, images) == pytest.approx(whole, abs=1e-6)


def test_processor_config_is_used(tmp_path):
    folder = _save_vit(tmp_path / "vit", with_processor=True)
    image = _images()[1]
    expected = ViTImageProcessor.from_pretrained(folder)(images=image, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(DinoScorer(folder).preprocess(image), expected)


def test_embedding_is_the_cls_token(tmp_path):
    folder = _save_vit(tmp_path / "vit", with_processor=True)
    images = _images()
    scorer = DinoScorer(folder)
    pixels = ViTImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        cls = ViTModel.from_pretrained(folder).eval()(pixel_values=pixels).last_hidden_state[:, 0]
    assert torch.allclose(scorer.image_features(images), torch.nn.functional.normalize(cls, dim=-1), atol=1e-5)


def test_missing_folder_names_it(tmp_path):
    missing = tmp_path / "no-such-dino"
    with pytest.raises(DinoModelMissing, match="no-such-dino.*does not exist") as err:
        DinoScorer(str(missing))
    assert isinstance(err.value, FileNotFoundError)
    assert "save_pretrained('models/dino-vits16')" in str(err.value)
    assert "evaluate.dino_model" in str(err.value)


def test_folder_without_config_names_it(tmp_path):
    empty = tmp_path / "empty-dino"
    empty.mkdir()
    with pytest.raises(DinoModelMissing, match="empty-dino has no config.json"):
        DinoScorer(str(empty))
