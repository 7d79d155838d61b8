"""The backbone seam: SD and SDXL pipelines behind one encode/predict interface, identifier
tokens in every text encoder, precision rules (tiny presets)."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from lifelong_diffusion.backbone import Backbone, Conditioning, parse_precision
from lifelong_diffusion.base_model import BaseModelError, resolve_base_model


@pytest.fixture(scope="module", params=["tiny-random", "tiny-sdxl"])
def backbone(request):
    return Backbone.load(request.param, "cpu")


def test_pipeline_class_comes_from_model_index(backbone):
    assert backbone.is_sdxl == (type(backbone.pipe).__name__ == "StableDiffusionXLPipeline")
    assert len(backbone.text_encoders) == len(backbone.tokenizers) == (2 if backbone.is_sdxl else 1)
    assert backbone.resolution == 32 and backbone.latent_shape == (4, 16, 16)
    for module in (backbone.unet, backbone.vae, *backbone.text_encoders):
        assert not any(p.requires_grad for p in module.parameters())  # frozen base
    assert all(isinstance(p, AttnProcessor2_0) for p in backbone.unet.attn_processors.values())


def test_encode_builds_what_the_unet_reads(backbone):
    cond = backbone.encode(["a photo of a star", "a photo of a heart"])
    assert cond.states.shape == (2, 77, backbone.unet.config.cross_attention_dim)
    if backbone.is_sdxl:  # pooled embedding of the second encoder, (size, crop, target) ids
        assert cond.pooled.shape == (2, backbone.text_encoders[1].config.projection_dim)
        assert cond.time_ids.tolist() == [[32, 32, 0, 0, 32, 32]] * 2
    else:
        assert cond.pooled is None and cond.time_ids is None
    out = backbone.predict(torch.randn(2, *backbone.latent_shape), torch.tensor([10, 500]), cond)
    assert out.shape == (2, *backbone.latent_shape) and torch.isfinite(out).all()


def test_encode_matches_the_pipelines_own_prompt_encoding(backbone):
    """Training must condition exactly as generation does (diffusers' encode_prompt)."""
    prompt = "a photo of a star"
    ours = backbone.encode([prompt])
    if backbone.is_sdxl:
        states, _, pooled, _ = backbone.pipe.encode_prompt(prompt, device="cpu",
                                                           do_classifier_free_guidance=False)
        torch.testing.assert_close(ours.pooled, pooled)
    else:
        states, _ = backbone.pipe.encode_prompt(prompt, "cpu", 1, False)
    torch.testing.assert_close(ours.states, states)


def test_unconditional_is_zeros_for_sdxl_and_the_empty_prompt_for_sd(backbone):
    uncond = backbone.unconditional(3)
    assert len(uncond) == 3
    if backbone.is_sdxl:
        assert uncond.states.abs().sum() == 0 and uncond.pooled.abs().sum() == 0
    else:
        torch.testing.assert_close(uncond.states[:1], backbone.encode([""]).states)


def test_tokens_go_into_every_text_encoder_and_round_trip(backbone):
    widths = [t.shape[1] for t in backbone.embedding_tables]
    row = torch.randn(sum(widths))
    backbone.add_tokens({"<backbone-test>": row})
    torch.testing.assert_close(backbone.token_embedding("<backbone-test>"), row)
    for table, token_id, part in zip(backbone.embedding_tables, backbone.token_ids("<backbone-test>"),
                                     row.split(widths)):
        torch.testing.assert_close(table[token_id].float(), part)
    with pytest.raises(ValueError, match="trained on another base model"):
        backbone.add_tokens({"<wrong>": torch.zeros(sum(widths) + 1)})


def test_conditioning_indexes_every_part_alike():
    cond = Conditioning(torch.arange(3.0).view(3, 1, 1), torch.arange(3.0).view(3, 1),
                        torch.arange(3.0).view(3, 1))
    picked = cond[torch.tensor([2, 0])]
    assert picked.states.flatten().tolist() == picked.pooled.flatten().tolist() == [2.0, 0.0]
    assert cond.repeat_interleave(2).time_ids.flatten().tolist() == [0, 0, 1, 1, 2, 2]
    assert cond.repeat(2).pooled.flatten().tolist() == [0, 1, 2, 0, 1, 2]
    assert len(Conditioning.cat([cond, cond[:1]])) == 4


def test_low_precision_keeps_text_encoders_and_vae_in_fp32():
    backbone = Backbone.load("tiny-random", "cpu", precision="bf16")
    assert backbone.unet.dtype == torch.bfloat16
    assert backbone.vae.dtype == backbone.text_encoders[0].dtype == torch.float32
    with backbone.autocast():
        out = backbone.predict(torch.randn(1, *backbone.latent_shape), torch.tensor([10]),
                               backbone.encode(["a star"]))
    assert torch.isfinite(out.float()).all()


def test_precision_names():
    assert parse_precision("auto", "cpu") == torch.float32  # CPU stays exact
    assert parse_precision("fp16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="use one of auto, fp32, bf16, fp16"):
        parse_precision("fp8", "cpu")


def test_unsupported_pipeline_class_is_a_clear_error(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(BaseModelError, match="KandinskyPipeline is not supported"):
        Backbone.load(str(folder))
    assert resolve_base_model(str(folder)) == folder  # the folder itself is fine
