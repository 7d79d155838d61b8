"""Standard files beside every snapshot (export.py): run as its README says, with plain
diffusers and no project code, they draw the project's images; the kohya file is the same
LoRA; the LoRA alpha travels in the adapter metadata; S_0 exports nothing."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lifelong_diffusion.base_model import resolve_base_model
from lifelong_diffusion.export import export_standard_files, sort_metadata
from lifelong_diffusion.generation import PersonalizedModel
from lifelong_diffusion.snapshot import empty_snapshot, load_snapshot, save_snapshot
from lifelong_diffusion.train import TrainConfig, train_concept
from lifelong_diffusion.world import DEFAULT_SEQUENCE

C1, C2 = DEFAULT_SEQUENCE[:2]
SEEDS, STEPS = [0, 1], 2
# alpha != rank: without the adapter metadata diffusers would load the LoRA at alpha = rank
CFG = dict(steps=3, batch_size=2, device="cpu", lora_rank=4, lora_alpha=8.0)
# merge: the project adds B A to the base weights, diffusers runs the LoRA beside them, so
# float rounding may move a pixel by 1/255; routed: the gate multiplies the units' outputs in
# the project and B in the export, the same rounding; the others run the very same computation
TOLERANCE = {"merge": 1, "routed": 1}


@pytest.fixture(scope="module")
def sequence(world_concepts, tmp_path_factory):
    """Returns run(method, base): S_2 of a tiny 2-concept sequence, trained once per module."""
    done = {}

    def run(method: str, base: str) -> Path:
        if (method, base) not in done:
            resolve_base_model(base)  # a cold preset cache would change the LoRA init
            out = tmp_path_factory.mktemp(f"{method}-{base}")
            save_snapshot(empty_snapshot(base), out / "base")
            cfg = TrainConfig(method=method, **CFG)
            for prev, name in (("base", C1), (C1, C2)):
                train_concept(out / prev, world_concepts / "processed" / name, out / name, cfg,
                              progress=False)
            done[method, base] = out / C2
        return done[method, base]

    return run


def readme_pipeline(snap_dir: Path):
    """The pipeline that the snapshot's README code builds (diffusers, safetensors, torch only)."""
    code = re.search(r"```python\n(.*?)```", (snap_dir / "diffusers/README.md").read_text(), re.S)[1]
    line = f'SNAPSHOT = "adapters/{snap_dir.name}"'
    assert line in code
    scope = {}
    exec(code.replace(line, f'SNAPSHOT = "{snap_dir}"'), scope)  # as a user would run it
    pipe = scope["pipe"]
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def unet_eps(unet) -> torch.Tensor:
    """The UNet's prediction on one fixed input (SDXL's added conditioning included)."""
    gen, c = torch.Generator().manual_seed(1), unet.config
    x = torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=gen)
    cond = torch.randn(2, 8, c.cross_attention_dim, generator=gen)
    extra = {}
    if c.addition_embed_type == "text_time":
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(2, pooled, generator=gen),
                                       "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}}
    with torch.no_grad():
        return unet(x, torch.tensor([10, 700]), cond, **extra).sample


@pytest.mark.parametrize("method, base", [("naive", "tiny-random"), ("merge", "tiny-random"),
                                          ("independent", "tiny-random"), ("routed", "tiny-random"),
                                          ("naive", "tiny-sdxl")])
def test_plain_diffusers_draws_the_projects_images(method, base, sequence):
    snap_dir = sequence(method, base)
    snap = load_snapshot(snap_dir)
    per_token = method in ("independent", "routed")  # one LoRA per concept, a subfolder per token
    loras = ([f"diffusers/{t}/pytorch_lora_weights.safetensors" for t in ("c1", "c2")]
             + [f"kohya/{C2}-{t}.safetensors" for t in ("c1", "c2")] if per_token else
             ["diffusers/pytorch_lora_weights.safetensors", f"kohya/{C2}.safetensors"])
    files = {str(p.relative_to(snap_dir)) for p in snap_dir.rglob("*") if p.is_file()}
    assert files >= {"diffusers/README.md", "diffusers/c1.safetensors", "diffusers/c2.safetensors", *loras}

    pipe, model = readme_pipeline(snap_dir), PersonalizedModel(snap)
    if not per_token:  # the UNet itself, finer than 8-bit images (merge: B A folded vs beside)
        assert torch.allclose(unet_eps(pipe.unet), unet_eps(model.backbone.unet), atol=1e-5)
    size = model.backbone.resolution
    prompts = [(c["token"], f"a photo of {c['token']} {c['class_word']}") for c in snap.concepts]
    for token, prompt in prompts + [(None, "a photo of a star")]:
        # independent and routed, as their README says: the prompt's own LoRA, none without a learned token
        if per_token and token:
            pipe.enable_lora()
            pipe.set_adapters(token.strip("<>"))
        elif per_token:
            pipe.disable_lora()
        theirs = pipe([prompt] * len(SEEDS), height=size, width=size, num_inference_steps=STEPS,
                      guidance_scale=5.0, generator=[torch.Generator().manual_seed(s) for s in SEEDS]).images
        ours = model.generate(prompt, SEEDS, steps=STEPS, guidance_scale=5.0)
        diff = np.abs(pixels(theirs) - pixels(ours)).max()
        assert diff <= TOLERANCE.get(method, 0), (prompt, diff)


@pytest.mark.parametrize("method, base", [("naive", "tiny-random"), ("merge", "tiny-random"),
                                          ("naive", "tiny-sdxl")])
def test_kohya_file_is_the_same_lora_and_alpha_is_in_the_metadata(method, base, sequence):
    snap_dir = sequence(method, base)
    lora = snap_dir / "diffusers/pytorch_lora_weights.safetensors"
    weights = load_file(lora)
    assert weights and all(k.startswith("unet.") and "lora" in k for k in weights)
    assert any(".resnets.0.conv1.lora_A" in k for k in weights)  # peft conv LoRA targets too
    with safe_open(lora, "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    # merge: 2 folded steps of rank 4, B already scaled, so alpha = r_total
    assert (meta["unet.r"], meta["unet.lora_alpha"]) == ((4, 8.0) if method == "naive" else (8, 8.0))

    folder = resolve_base_model(base)

    def eps(*lora_args, **kwargs) -> torch.Tensor:
        pipe = DiffusionPipeline.from_pretrained(folder)  # SD or SDXL, from model_index.json
        if lora_args:
            pipe.load_lora_weights(*lora_args, **kwargs)
        return unet_eps(pipe.unet)

    exported = eps(str(snap_dir / "diffusers"))
    assert torch.equal(eps(str(snap_dir / "kohya"), weight_name=f"{C2}.safetensors"), exported)
    assert not torch.allclose(eps(), exported, atol=1e-3)  # the LoRA matters
    if method == "naive":  # the same weights without the metadata: diffusers' alpha = rank differs
        assert not torch.allclose(eps(weights), exported, atol=1e-3)


def test_empty_snapshot_exports_nothing(tmp_path):
    export_standard_files(empty_snapshot("tiny-random"), tmp_path)
    assert not any(tmp_path.iterdir())


def test_snapshot_and_its_files_appear_together(tmp_path):
    """A failing export leaves no snapshot behind, as a crash in it would."""
    def fail(tmp: Path):
        (tmp / "diffusers").mkdir()
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        save_snapshot(empty_snapshot("tiny-random"), tmp_path / "snap", extras=fail)
    assert not any(tmp_path.iterdir())


def test_sorted_metadata_gives_the_same_bytes_for_the_same_weights(tmp_path):
    """safetensors writes metadata in a random order per process; sorted, two files of the
    same weights are byte-identical (DVC hashes bytes) and still load as before."""
    weights = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(5, dtype=torch.float16)}
    meta = {f"key{i}": str(i) for i in range(8)}
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    save_file(weights, first, metadata=meta)
    save_file(weights, second, metadata=dict(reversed(meta.items())))
    for path in (first, second):
        sort_metadata(path)
        with safe_open(path, "pt") as handle:
            assert handle.metadata() == meta
        loaded = load_file(path)
        assert all(torch.equal(loaded[k], v) for k, v in weights.items())
    assert first.read_bytes() == second.read_bytes()
