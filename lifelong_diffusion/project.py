"""The project on disk: params.yaml and where each stage reads and writes.

params.yaml has one section per stage (base, ingest, train, evaluate, register) plus the
`sequence`: concept names in learning order, each with an explicit `prev` (the concept before
it, or `base` for the first). DVC's foreach has no notion of "previous item", so the chain is
spelled out and checked here.
"""
from __future__ import annotations

import json
import tempfile

from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import EvalConfig, TrainConfig
from .fileio import exclusive_lock
from .ingest import CONCEPT_FILE, CONCEPT_NAME, check_concept, check_settings, read_concept_yaml

BASE = "base"  # name of S_0, the empty snapshot of the base model
LOCK_FILE = ".lifelong.lock"


class ParamsError(ValueError):
    """params.yaml is missing something or is inconsistent."""


@dataclass(frozen=True)
class Project:
    root: Path
    params_file: str = "params.yaml"

    @property
    def params(self) -> dict:
        path = self.root / self.params_file
        if not path.exists():
            raise ParamsError(f"{path} not found: run from the project folder or pass --project.")
        return yaml.safe_load(path.read_text()) or {}

    def section(self, name: str) -> dict:
        return dict(self.params.get(name) or {})

    def concept_dir(self, name: str) -> Path:
        return self.root / "data" / "concepts" / name

    def processed_dir(self, name: str | None = None) -> Path:
        folder = self.root / "data" / "processed"
        return folder / name if name else folder

    def snapshot_dir(self, name: str) -> Path:
        return self.root / "adapters" / name

    def eval_dir(self, name: str) -> Path:
        return self.root / "eval" / name

    def eval_metrics(self, name: str) -> dict:
        return json.loads((self.eval_dir(name) / "metrics.json").read_text())

    def taken_tokens(self, name: str) -> dict[str, str]:
        """Tokens of the other concepts of the sequence. Their raw photos may be gone
        (privacy), so a processed manifest is read first and concept.yaml only as a fallback."""
        taken = {}
        for other in (n for n in self.sequence() if n != name):
            manifest = self.processed_dir(other) / "manifest.json"
            raw = self.concept_dir(other) / CONCEPT_FILE
            if manifest.exists():
                taken[json.loads(manifest.read_text())["token"]] = other
            elif raw.exists():
                taken[read_concept_yaml(raw)["token"]] = other
        return taken

    def check(self) -> None:
        """Everything a run reads, checked before DVC touches an output (DVC deletes a
        stage's outputs before running it, so a bad value or folder would otherwise cost
        stored data): the sequence, the train and evaluate params, every concept folder
        (one whose photos are gone but whose processed copy exists is fine)."""
        order = self.sequence()
        for section, build in (("train", self.train_config), ("evaluate", self.eval_config)):
            try:
                build()
            except (TypeError, ValueError) as exc:  # unknown key, bad value
                raise ParamsError(f"{self.root / self.params_file}: {section}: {exc}") from exc
        for folder in (self.root, self.root / "adapters", self.processed_dir(), self.root / "eval",
                       self.summary_file.parent):
            if folder.is_dir() and not writable(folder):  # else found only after the training
                raise ParamsError(f"{folder} is not writable: the run stores its outputs there; "
                                  "make it writable (e.g. chmod -R u+w) and run again.")
        settings = self.section("ingest")
        try:
            check_settings(**settings)
        except (TypeError, ValueError) as exc:
            raise ParamsError(f"{self.root / self.params_file}: ingest: {exc}") from exc
        for name in order:
            if self.concept_dir(name).exists() or not (self.processed_dir(name) / "manifest.json").exists():
                check_concept(self.concept_dir(name), taken_tokens=self.taken_tokens(name), **settings)

    def lock(self):
        """One run of this project at a time (`lifelong run`, a deployment run, `lifelong add`)."""
        return exclusive_lock(self.root / LOCK_FILE, f"a run of the project {self.root}")

    @property
    def registry_file(self) -> Path:
        """registry.json: the register stage's output, which version holds which step."""
        return self.root / "registry.json"

    @property
    def summary_file(self) -> Path:
        """The continual-learning summary of the whole sequence (a DVC metrics file)."""
        return self.root / "metrics" / "continual.json"

    def sequence(self) -> list[str]:
        """Concept names in learning order, following the `prev` links from `base`."""
        return sequence_order(self.params.get("sequence") or {}, self.root / self.params_file)

    def class_words(self) -> list[str]:
        """Class words of the whole sequence, in learning order, from the ingested manifests."""
        words = []
        for name in self.sequence():
            manifest = self.processed_dir(name) / "manifest.json"
            if not manifest.exists():
                raise FileNotFoundError(f"{manifest} is missing: ingest '{name}' first "
                                        f"(`lifelong ingest {name}` or `dvc repro`).")
            words.append(json.loads(manifest.read_text())["class_word"])
        return list(dict.fromkeys(words))

    def previous(self, name: str) -> str:
        order = self.sequence()
        if name not in order:
            raise ParamsError(f"concept '{name}' is not in the sequence of {self.params_file}; "
                              f"known: {', '.join(order)}")
        i = order.index(name)
        return order[i - 1] if i else BASE

    @property
    def resolution(self) -> int | None:
        """base.resolution: the image size training and sampling use (null: the model's own)."""
        return self.section("base").get("resolution")

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.section("train"), resolution=self.resolution)

    def eval_config(self) -> EvalConfig:
        cfg = EvalConfig(**self.section("evaluate"), resolution=self.resolution)
        # weight files named relative to the project, wherever the command runs from
        for key in ("clip_weights", "attribute_classifier", "dino_model"):
            if getattr(cfg, key):
                setattr(cfg, key, str(self.root / getattr(cfg, key)))
        return cfg


def writable(folder: Path) -> bool:
    """A file can be created in `folder` (a probe, not os.access: that says yes to root on a
    read-only mount)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def sequence_order(sequence, source: Path) -> list[str]:
    """Validate the prev-chain: one concept after `base`, each name used once, no cycles."""
    if not sequence:
        raise ParamsError(f"{source}: `sequence` is empty; add concepts as `name: {{prev: base}}`.")
    if not isinstance(sequence, dict):
        raise ParamsError(f"{source}: `sequence` must map concept names to {{prev: ...}}, "
                          f"e.g. `my-dog: {{prev: base}}`; got a {type(sequence).__name__}.")
    after = {}
    for name, item in sequence.items():
        # Names become shell arguments (DVC runs `lifelong train <name>`), folders and run
        # names: one strict rule before anything runs.
        if not isinstance(name, str) or not CONCEPT_NAME.fullmatch(name):
            raise ParamsError(f"{source}: sequence name {name!r} is not a concept name; use 1-64 "
                              "lowercase letters, digits, '_' or '-', starting with a letter or "
                              "digit (the folder data/concepts/<name> must match).")
        if name == BASE:
            raise ParamsError(f"{source}: '{BASE}' is reserved for the base model; rename that "
                              "concept (folder and sequence entry).")
        prev = item.get("prev") if isinstance(item, dict) else None
        if prev is None:
            raise ParamsError(f"{source}: sequence.{name} needs a `prev` field, e.g. "
                              f"`{name}: {{prev: {BASE}}}` for the first concept, else the name "
                              "of the concept before it.")
        if prev in after:
            raise ParamsError(f"{source}: both '{after[prev]}' and '{name}' follow '{prev}'; "
                              "a lifelong sequence is a single chain.")
        after[prev] = name
    order, current = [], BASE
    while current in after and after[current] not in order:  # `not in`: stop on a cycle
        current = after[current]
        order.append(current)
    missing = sorted(set(sequence) - set(order))
    if missing:
        raise ParamsError(f"{source}: {', '.join(missing)} not reachable from `{BASE}` through "
                          "the `prev` links; fix their `prev` fields.")
    return order
