"""Resolve `base.model` from params.yaml to a local diffusers folder (backbone.py loads it).

The spec is one of: a preset name (built offline, see presets.py), a local diffusers folder,
or a Hugging Face hub id. Hub ids are only read from the local HF cache unless downloads are
explicitly allowed, because a download attempt on an offline machine would hang or fail late
with an obscure network error; failing at once with a clear message is kinder.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .presets import PRESETS, PresetMissingError, materialize_preset


class BaseModelError(RuntimeError):
    """The base model named in params.yaml cannot be found or loaded."""


def preset_cache_dir() -> Path:
    """Where presets are materialized; override with LIFELONG_CACHE (tests use a temp dir)."""
    root = os.environ.get("LIFELONG_CACHE") or Path.home() / ".cache" / "lifelong-diffusion"
    return Path(root) / "presets"


def resolve_base_model(spec: str, allow_download: bool = False) -> Path:
    """Return a local folder holding a diffusers pipeline (SD or SDXL) for `spec`."""
    if spec in PRESETS:
        try:
            return materialize_preset(spec, preset_cache_dir() / spec)
        except PresetMissingError as exc:
            raise BaseModelError(str(exc)) from exc
    folder = Path(spec).expanduser()
    if folder.exists():
        if not (folder / "model_index.json").exists():
            raise BaseModelError(
                f"{folder} is not a diffusers pipeline folder (no model_index.json). "
                "Point base.model in params.yaml at a folder written by save_pretrained()."
            )
        return folder
    return _hub_snapshot(spec, allow_download)


def _hub_snapshot(repo_id: str, allow_download: bool) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=not allow_download))
    except Exception as exc:  # hub errors come in many classes; all mean "not available"
        raise BaseModelError(
            f"base.model '{repo_id}' is neither a preset ({', '.join(PRESETS)}) nor a local "
            f"folder, and it is not in the local Hugging Face cache ({type(exc).__name__}). "
            "This machine cannot download weights: set base.model in params.yaml to a local "
            "diffusers folder (e.g. one written by StableDiffusionPipeline.save_pretrained), "
            "or set base.allow_download: true on a machine with Hub access."
        ) from exc


def pick_device(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"
