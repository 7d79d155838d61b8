"""Standard files beside a snapshot, so its adapter and tokens work in the tools users already
have (plain diffusers, ComfyUI, A1111) without this project:

    diffusers/pytorch_lora_weights.safetensors   the UNet LoRA, `pipe.load_lora_weights(folder)`,
                                                 its alpha in the adapter metadata
    diffusers/<token>/pytorch_lora_weights...    a LoRA for one token's prompts (independent)
    diffusers/<token>.safetensors                textual inversion of <token>, one per token
    diffusers/README.md                          the plain-diffusers code for this snapshot
    kohya/<snapshot>[-<token>].safetensors       the same LoRA(s) in kohya/A1111 format

(<token> without its angle brackets.) What a method's snapshot is as LoRAs is the method's
own hook (`Method.lora_exports`, `Method.export_note`), so this file knows no method.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.lora_base import LORA_WEIGHT_NAME_SAFE
from safetensors.torch import save_file

from .backbone import native_resolution, pipeline_class
from .base_model import resolve_base_model
from .methods import snapshot_method
from .methods.base import LoraExport
from .presets import PRESETS
from .snapshot import Snapshot

KOHYA_PARTS = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}


def bare(token: str) -> str:
    """The token as a file name, <c1> -> c1 (tokens are <lowercase letters, digits, _ or ->)."""
    return token.strip("<>")


def export_standard_files(snap: Snapshot, folder: Path) -> None:
    """Write the standard files of `snap` into its folder; S_0 has nothing to export."""
    if not snap.concepts:
        return
    base = resolve_base_model(snap.base_model)
    pipe_class = pipeline_class(base)
    with torch.device("meta"):  # the architecture for the method's shapes, no weights read
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(base / "unet"))
    method = snapshot_method(snap)
    exports = method.lora_exports(snap, unet)
    folder = Path(folder)
    (folder / "diffusers").mkdir(exist_ok=True)
    for export in exports:
        weights = {k: v.detach().float().cpu().contiguous() for k, v in export.weights.items()}
        # diffusers assumes alpha = rank without the metadata (the LoraConfig kwargs it reads)
        metadata = {"r": export.rank, "lora_alpha": export.alpha,
                    "target_modules": sorted({k.rsplit(".lora_", 1)[0] for k in weights})}
        pipe_class.save_lora_weights(folder / _lora_folder(export), unet_lora_layers=weights,
                                     unet_lora_adapter_metadata=metadata)
        sort_metadata(folder / _lora_folder(export) / LORA_WEIGHT_NAME_SAFE)
        (folder / "kohya").mkdir(exist_ok=True)
        save_file(to_kohya(weights, export.alpha), folder / "kohya" / _kohya_name(snap, export))
    sdxl = pipe_class is StableDiffusionXLPipeline
    # an SDXL snapshot row is the first encoder's row, then the second's (Backbone._split)
    width = json.loads((base / "text_encoder" / "config.json").read_text())["hidden_size"]
    for token, row in snap.tokens.items():
        row = row.detach().float().cpu()[None]  # (1, D): one vector, as diffusers' TI training saves it
        parts = {"clip_l": row[:, :width], "clip_g": row[:, width:]} if sdxl else {token: row}
        save_file({k: v.clone() for k, v in parts.items()},  # no shared storage in safetensors
                  folder / "diffusers" / f"{bare(token)}.safetensors")
    (folder / "diffusers" / "README.md").write_text(_readme(snap, method, exports, base, sdxl))


def sort_metadata(path: Path) -> None:
    """Rewrite a safetensors file with its metadata keys sorted. safetensors writes the
    metadata map in a random order per process (a Rust HashMap), so the same weights gave other
    bytes on each run and the step's output another DVC hash (a changed dvc.lock)."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header = {"__metadata__": dict(sorted(header.pop("__metadata__", {}).items())), **header}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads its header to 8 bytes, for alignment
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size:])


def to_kohya(weights: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """peft keys `<module path>.lora_A/B.weight` as kohya's `lora_unet_<path with _ for .>`
    `.lora_down/.lora_up.weight`, with each module's alpha explicit, as kohya stores it: the
    diffusers module names that ComfyUI maps and diffusers' kohya converter reads back."""
    out = {}
    for key, tensor in weights.items():
        path, part = key.rsplit(".lora_", 1)
        name = "lora_unet_" + path.replace(".", "_")
        out[f"{name}.{KOHYA_PARTS[part]}"] = tensor
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def _lora_folder(export: LoraExport) -> str:
    """Where the diffusers LoRA goes in the snapshot: a subfolder per token if per token."""
    return "diffusers" if export.token is None else f"diffusers/{bare(export.token)}"


def _kohya_name(snap: Snapshot, export: LoraExport) -> str:
    """Named after the snapshot, so the LoRAs of several steps can share ComfyUI's loras/."""
    return f"{snap.name}{'' if export.token is None else '-' + bare(export.token)}.safetensors"


def _base_argument(spec: str, folder: Path) -> str:
    """What from_pretrained takes: a hub id as is, a local folder by its path (relative when
    under the working directory, as in the repository: models/world/base)."""
    if spec not in PRESETS and not Path(spec).expanduser().exists():
        return spec
    folder, here = folder.resolve(), Path.cwd().resolve()
    return str(folder.relative_to(here) if folder.is_relative_to(here) else folder)


def _readme(snap: Snapshot, method, exports: list[LoraExport], base: Path, sdxl: bool) -> str:
    """The exact plain-diffusers code for this snapshot (tests/test_export.py runs it)."""
    last = snap.concepts[-1]
    size = snap.config.get("resolution") or native_resolution(base)
    pipe = "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline"
    extra = "" if sdxl else ", safety_checker=None"  # the project generates without it
    code = ["import torch", f"from diffusers import DDIMScheduler, {pipe}",
            *(["from safetensors.torch import load_file"] if sdxl else []), "",
            f'SNAPSHOT = "adapters/{snap.name}"  # this snapshot\'s folder',
            f'pipe = {pipe}.from_pretrained("{_base_argument(snap.base_model, base)}"{extra})',
            "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # as the project samples"]
    kohya = []
    for e in exports:
        name = "" if e.token is None else f', adapter_name="{bare(e.token)}"'
        code.append(f'pipe.load_lora_weights(f"{{SNAPSHOT}}/{_lora_folder(e)}"{name})')
        kohya.append(f'`pipe.load_lora_weights(f"{{SNAPSHOT}}/kohya", '
                     f'weight_name="{_kohya_name(snap, e)}"{name})`')
    for token in (c["token"] for c in snap.concepts):
        file = f'f"{{SNAPSHOT}}/diffusers/{bare(token)}.safetensors"'
        if not sdxl:
            code.append(f'pipe.load_textual_inversion({file}, token="{token}")')
            continue
        code.append(f"emb = load_file({file})  # one row per text encoder")
        code += [f'pipe.load_textual_inversion(emb["{key}"], token="{token}", '
                 f"text_encoder=pipe.text_encoder{n}, tokenizer=pipe.tokenizer{n})"
                 for key, n in (("clip_l", ""), ("clip_g", "_2"))]
    if any(e.token for e in exports):
        code += ["# one concept's LoRA per prompt: pipe.disable_lora() for a prompt without a "
                 "learned token,", "# pipe.enable_lora() before the next set_adapters",
                 f'pipe.set_adapters("{bare(last["token"])}")']
    code += [f'image = pipe("a photo of {last["token"]} {last["class_word"]}", height={size}, '
             f"width={size}, num_inference_steps=20,",
             "             guidance_scale=5.0, generator=torch.Generator().manual_seed(0)).images[0]"]
    concepts = ", ".join(f"`{c['token']}` ({c['class_word']})" for c in snap.concepts)
    claim = ("see below what it leaves out" if method.export_note else
             "with the same seed, steps and guidance it draws the project's images")
    lines = [f"# {snap.name}: step {snap.step} of a lifelong-diffusion sequence, method `{snap.method}`",
             "", f"Concepts: {concepts}. Plain diffusers, no project code; {claim}:", "",
             "```python", *code, "```", ""]
    if kohya:
        lines += ["The same LoRA in kohya/A1111 format, `../kohya/` (ComfyUI: `models/loras/`), "
                  "loads in diffusers with " + "; ".join(kohya) + ".", ""]
    note = method.export_note or "Not exported: nothing; these files generate what the project generates."
    return "\n".join([*lines, note, ""])
