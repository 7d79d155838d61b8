"""Quick versions of the world's pretraining and attribute classifier (tiny step counts):
they check the plumbing and the file formats; benchmarks/world.py measures quality."""
from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from lifelong_diffusion.world.attributes import accuracy, load, predict, save, train_attribute_classifier
from lifelong_diffusion.world.pretrain import PretrainConfig, pretrain_world_model
from lifelong_diffusion.world.render import Scene, render


def test_pretrained_folder_loads_with_plain_diffusers(tmp_path):
    cfg = PretrainConfig(n_images=64, vae_steps=2, vae_batch=8, steps=2, batch_size=8,
                         warmup_steps=1, log_every=1)
    pretrain_world_model(cfg, tmp_path / "base", progress=False)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "base")
    image = pipe("a red star on a gray background", num_inference_steps=2, height=32, width=32,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (32, 32, 3)
    assert pipe.vae.config.scaling_factor > 0
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 32


def test_attribute_classifier_learns_quickly_and_round_trips(tmp_path):
    model = train_attribute_classifier(seed=0, steps=150, pool_size=2000)
    scores = accuracy(model, n=300)
    assert scores["pattern"] > 0.5 and scores["color"] > 0.3  # chance: 0.2 and 0.125
    save(model, tmp_path / "attr.pt")
    image = render(Scene("star", "red", "gray"))
    assert predict(load(tmp_path / "attr.pt"), [image]) == predict(model, [image])
    assert set(predict(model, [image])[0]) >= {"shape", "color", "pattern"}
