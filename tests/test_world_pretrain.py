"""Quick versions of the world's pretraining and evaluators (tiny step counts): they check
the plumbing and the file formats; benchmarks/world.py measures quality."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
from diffusers import StableDiffusionPipeline

from lifelong_diffusion.world.attributes import accuracy, load, predict, save, train_attribute_classifier
from lifelong_diffusion.world.build import WorldBuildConfig, build_world_models
from lifelong_diffusion.world.evaluator import WORLD_CLIP
from lifelong_diffusion.world.render import Scene, render

TINY = {"pattern_fraction": 0.3, "n_images": 64, "vae_steps": 2, "vae_batch": 8, "steps": 2, "batch_size": 8,
        "warmup_steps": 1, "log_every": 1, "clip_steps": 3, "clip_pool": 64, "attribute_steps": 2,
        "attribute_pool": 64}


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "world"
    build_world_models(WorldBuildConfig.from_params(TINY), out, log=None)
    return out


def test_pretrained_folder_loads_with_plain_diffusers(tiny_world):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_world / "base")
    image = pipe("a red star on a gray background", num_inference_steps=2, height=32, width=32,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (32, 32, 3)
    assert pipe.vae.config.scaling_factor > 0
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 32


def test_world_clip_loads_with_plain_open_clip(tiny_world):
    import lifelong_diffusion.clip_score  # noqa: F401  registers the project's model configs

    model, _, preprocess = open_clip.create_model_and_transforms(
        WORLD_CLIP, pretrained=str(tiny_world / "clip.safetensors"))
    image = preprocess(render(Scene("star", "red", "gray"), 64))[None]
    text = open_clip.get_tokenizer(WORLD_CLIP)(["a photo of a star"])
    with torch.no_grad():
        assert model.encode_image(image).shape == model.encode_text(text).shape == (1, 64)


def test_build_report_and_unknown_params(tiny_world):
    report = json.loads((tiny_world / "pretrain.json").read_text())
    assert report["base"]["unet_steps"] == 2 and report["config"]["clip_steps"] == 3
    assert report["pretrain_seconds"] >= report["base"]["pretrain_seconds"] > 0
    assert (tiny_world / "attributes.safetensors").stat().st_size > 0
    # the classifier is also scored on the base VAE's reconstructions, which it trains on
    assert set(report["attributes"]["accuracy_through_vae"]) == {"shape", "color", "pattern", "pattern_color"}
    with pytest.raises(ValueError, match="unknown keys.*'stesp'"):
        WorldBuildConfig.from_params({"stesp": 3})


def test_attribute_classifier_learns_quickly_and_round_trips(tmp_path):
    model = train_attribute_classifier(seed=0, steps=150, pool_size=1000)
    scores = accuracy(model, n=300)
    assert scores["pattern"] > 0.5 and scores["color"] > 0.3  # chance: 0.2 and 0.125
    assert scores["pattern_color"] > 0.3  # chance 1/9; "none" for every plain render
    save(model, tmp_path / "attr.safetensors")
    image = render(Scene("star", "red", "gray"))
    assert predict(load(tmp_path / "attr.safetensors"), [image]) == predict(model, [image])
    assert set(predict(model, [image])[0]) >= {"shape", "color", "pattern", "pattern_color"}


def test_shipped_attribute_reader_scores_true_images_exactly(world_concepts):
    """The shipped classifier, as evaluation uses it: a concept's own photos show its shape and
    pattern; plain renders of the class count for the class prompt, patterned ones do not."""
    from lifelong_diffusion.evaluate import AttributeReader, means, world_truth
    from lifelong_diffusion.presets import WORLD_DIR
    from lifelong_diffusion.train import read_processed_concept

    reader = AttributeReader(str(WORLD_DIR / "attributes.safetensors"))
    folder = world_concepts / "processed" / "striped-star"
    truth = world_truth(folder)
    assert truth == {"shape": "star", "color": "yellow", "pattern": "stripes", "pattern_color": "blue"}
    photos = read_processed_concept(folder).images
    assert means(reader.concept_samples(photos, truth)) == {"attr_acc": 1.0, "pattern_acc": 1.0}
    assert means(reader.concept_samples(photos, {**truth, "pattern": "dots"}))["pattern_acc"] == 0.0
    plain = [render(Scene("star", c, "gray", cx=0.4 + 0.05 * i)) for i, c in enumerate(("red", "blue", "green"))]
    assert means(reader.class_samples(plain, "star")) == {"attr_acc": 1.0, "pattern_acc": 1.0}
    assert means(reader.class_samples(photos, "star")) == {"attr_acc": 0.0, "pattern_acc": 0.0}
    # per image, in order (the scores are their means): a dotted photo among the striped ones
    dotted = read_processed_concept(world_concepts / "processed" / "dotted-heart").images[0]
    assert reader.concept_samples([photos[0], dotted], truth) == {"attr_acc": [1.0, 0.0],
                                                                 "pattern_acc": [1.0, 0.0]}
    assert reader.class_samples([plain[0], photos[0]], "star") == {"attr_acc": [1.0, 0.0],
                                                                   "pattern_acc": [1.0, 0.0]}


def test_vae_textures_repaint_only_objects_in_two_base_colours():
    from lifelong_diffusion.world.pretrain import generic_textures, object_mask, to_pixels
    from lifelong_diffusion.world.render import COLORS, base_dataset

    pixels = to_pixels([image for image, _ in base_dataset(8, seed=3)])
    textured = generic_textures(pixels, 0.5, torch.Generator().manual_seed(0))
    again = generic_textures(pixels, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(textured, again)  # seeded
    assert torch.equal(textured[4:], pixels[4:])  # only the requested share
    palette = {tuple(c) for c in (torch.tensor(list(COLORS.values())) / 127.5 - 1).tolist()}
    for original, painted in zip(pixels[:4], textured[:4]):
        inside = object_mask(original[None])[0, 0] > 0
        assert torch.equal(painted[:, ~inside], original[:, ~inside])  # background untouched
        colours = {tuple(v) for v in painted[:, inside].T.tolist()}
        assert len(colours) == 2 and colours <= palette  # blotches of two base colours


def test_world_check_keeps_samples_and_reuses_them_only_when_unchanged(tmp_path):
    from benchmarks.world import concept_after_lora
    from lifelong_diffusion.presets import WORLD_DIR

    kept = tmp_path / "samples"

    def check(work: str, steps: int) -> dict:
        return concept_after_lora(WORLD_DIR, "ringed-circle", tmp_path / work, {"steps": steps}, 1, 2,
                                  samples_dir=kept)
    first = check("a", 2)
    assert sorted(p.name for p in (kept / "ringed-circle").glob("concept-*.png")) == ["concept-00.png",
                                                                                      "concept-01.png"]
    assert check("b", 2) == first and not (tmp_path / "b").exists()  # re-read, not retrained
    assert check("c", 3)["lora_steps"] == 3 and (tmp_path / "c").exists()  # other settings: trained again


def test_world_check_over_training_seeds_reports_the_mean_and_each_run():
    from benchmarks.world import PER_CONCEPT, mean_check

    def run(share: float) -> dict:
        return {**dict.fromkeys(PER_CONCEPT, share), "lora_steps": 600, "lora_seconds": 10.0}
    assert mean_check([run(0.5)]) == run(0.5)
    two = mean_check([run(0.125), run(0.875)])
    assert two["concept_attr_acc_after_lora"] == 0.5 and two["lora_steps"] == 600
    assert two["concept_attr_acc_after_lora_by_train_seed"] == [0.125, 0.875]


def test_world_check_trains_and_samples_at_the_size_the_world_was_pretrained_at(tiny_world, tmp_path):
    """The tiny 32 px world learns from 32 px photos, not at the shipped world's 40 px
    (params.yaml's ingest.resolution)."""
    from benchmarks.world import concept_after_lora
    from PIL import Image

    kept = tmp_path / "samples"
    concept_after_lora(tiny_world, "ringed-circle", tmp_path / "work", {"steps": 1}, 1, 1, samples_dir=kept)
    for kind in ("photo", "concept"):
        assert Image.open(kept / "ringed-circle" / f"{kind}-00.png").size == (32, 32)
