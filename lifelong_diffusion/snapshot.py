"""Snapshots S_t: everything step t leaves for step t+1 (and for evaluation).

A snapshot folder holds
  snapshot.json        step, concepts learned so far, method, base model, LoRA settings, config
  adapter.safetensors  LoRA weights of the UNet (peft state dict; absent for the empty S_0
                       and for methods that fold each adapter into their state: folded.py)
  tokens.safetensors   one embedding row per learned identifier token
  state.safetensors    method state (Fisher, anchors, ...), absent when the method keeps none
  train_log.json       loss per optimizer step and the method's figures
  timing.json          wall seconds; left out of DVC's hash (.dvcignore), so a re-run that
                       writes the same weights leaves dvc.lock unchanged
  diffusers/, kohya/   the same adapter and tokens as standard files for other tools
                       (export.py; written by train.py through `extras`)
It is written into a temporary sibling and renamed into place, so a crash never leaves a
half-written snapshot that a later step could mistake for a finished one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from .fileio import atomic_dir

FORMAT = 1
_TENSOR_FILES = ("adapter", "tokens", "state")
TIMING = "timing.json"  # the project's .dvcignore names it too


class SnapshotError(RuntimeError):
    """A snapshot folder is missing or unreadable."""


@dataclass
class Snapshot:
    step: int
    name: str
    method: str
    base_model: str
    concepts: list[dict] = field(default_factory=list)  # [{name, token, class_word}] in order
    lora: dict | None = None  # LoRA settings the sequence trains with, None for S_0
    config: dict = field(default_factory=dict)  # flat training params, for tracking
    adapter: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"adapter": self.adapter, "tokens": self.tokens, "state": self.state}

    def fingerprint(self) -> str:
        """Content hash of the weights and what they mean; equal snapshots hash equal."""
        digest = hashlib.sha256()
        meta = {k: getattr(self, k) for k in ("method", "base_model", "concepts", "lora")}
        digest.update(json.dumps(meta, sort_keys=True).encode())
        for group, tensors in self.tensors.items():
            for key in sorted(tensors):
                tensor = tensors[key].detach().cpu().contiguous()
                digest.update(f"{group}/{key}/{tensor.dtype}/{tuple(tensor.shape)}".encode())
                digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()


def empty_snapshot(base_model: str) -> Snapshot:
    """S_0: the base model itself, nothing learned yet."""
    return Snapshot(step=0, name="base", method="none", base_model=base_model)


def save_snapshot(snap: Snapshot, folder: Path, train_log: dict | None = None,
                  inputs: str | None = None, extras: Callable[[Path], None] | None = None,
                  timing: dict | None = None) -> str:
    """Write `snap` atomically to `folder`; returns its fingerprint. `inputs` is the key of
    what it was trained from (stamps.py), kept outside the fingerprint. `extras(tmp)` writes
    further files into the temporary folder, so they appear with the snapshot or not at all."""
    fingerprint = snap.fingerprint()
    meta = {
        "format": FORMAT, "step": snap.step, "name": snap.name, "method": snap.method,
        "base_model": snap.base_model, "concepts": snap.concepts, "lora": snap.lora,
        "config": snap.config, "fingerprint": fingerprint, "inputs": inputs,
    }
    with atomic_dir(Path(folder)) as tmp:
        for group, tensors in snap.tensors.items():
            if tensors:
                save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                          tmp / f"{group}.safetensors")
        (tmp / "snapshot.json").write_text(json.dumps(meta, indent=2) + "\n")
        if train_log is not None:
            (tmp / "train_log.json").write_text(json.dumps(train_log) + "\n")
        if timing is not None:
            (tmp / TIMING).write_text(json.dumps(timing) + "\n")
        if extras is not None:
            extras(tmp)
    return fingerprint


def load_snapshot(folder: Path) -> Snapshot:
    """Read a snapshot and check it is the one its step wrote: a file changed or damaged
    since then (fingerprint mismatch, broken JSON or safetensors) is a SnapshotError naming
    the file, never a silent evaluation of other weights."""
    folder = Path(folder)
    meta_file = folder / "snapshot.json"
    if not meta_file.exists():
        raise SnapshotError(
            f"{meta_file} does not exist: the previous step has not finished. "
            "Run the sequence in order (`dvc repro` or `lifelong run`) so it is trained first."
        )
    rerun = f"delete {folder} and re-run its step (`lifelong run` or `dvc repro`)"
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{meta_file} is not valid JSON ({exc}); {rerun}.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise SnapshotError(f"{meta_file}: snapshot format {found} is not {FORMAT}; {rerun}.")
    tensors = {group: _load_tensors(folder / f"{group}.safetensors", rerun)
               for group in _TENSOR_FILES if (folder / f"{group}.safetensors").exists()}
    try:
        fields = {k: meta[k] for k in ("step", "name", "method", "base_model", "concepts", "lora",
                                       "config")}
        snap = Snapshot(**fields, **tensors)
    except (KeyError, TypeError) as exc:
        raise SnapshotError(f"{meta_file} lacks or mangles field {exc}; {rerun}.") from None
    if meta.get("fingerprint") != snap.fingerprint():
        files = ", ".join(f"{g}.safetensors" for g in tensors) or "no tensor files"
        raise SnapshotError(f"{folder}: its weights ({files}) or snapshot.json were changed after "
                            "the step wrote them (the fingerprint in snapshot.json does not "
                            f"match); {rerun}.")
    return snap


def _load_tensors(path: Path, rerun: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise SnapshotError(f"{path} is not a readable safetensors file ({exc}); {rerun}.") from None


def read_train_log(folder: Path) -> dict:
    return json.loads((Path(folder) / "train_log.json").read_text())


def read_timing(folder: Path) -> dict:
    """The step's wall seconds; empty where DVC restored the snapshot from its cache, which
    does not keep timing.json."""
    path = Path(folder) / TIMING
    return json.loads(path.read_text()) if path.exists() else {}
