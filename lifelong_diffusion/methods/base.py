"""The contract every method implements (docs/methods.md#adding-a-method).

Training: a regularizer added to the denoising loss and the state carried to the next step;
the shared step (train.py) owns everything else and hands the method a `TrainingView`.
Generation: how a snapshot of this method becomes a generating model (`fold_into_base`,
`load_for_generation`, `prompt_scope`) and as plain LoRAs for other tools (`lora_exports`,
`export_note`). Evaluation, `lifelong generate`, the MLflow model and export call these hooks
and nothing else, so a method that changes inference changes only its own file.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

from ..lora import STUDENT, add_lora

if TYPE_CHECKING:
    from PIL import Image

    from ..backbone import Backbone, Conditioning, EpsFn
    from ..snapshot import Snapshot


class ConceptView(Protocol):
    """The concept being learnt: only its own photos, never an earlier concept's."""

    name: str
    token: str
    class_word: str
    images: list["Image.Image"]


class TrainingView(Protocol):
    """What a method may use of the step in progress (train.Student is one)."""

    backbone: "Backbone"  # encode, predict, scheduler, latent shape
    unet: torch.nn.Module  # holds the teacher and student adapters
    snr_gamma: float | None

    def embed_prompts(self, prompts: list[str]) -> "Conditioning":
        """Conditioning of fixed prompts, without gradient."""

    def student_eps(self, noisy: torch.Tensor, t: torch.Tensor, cond: "Conditioning") -> torch.Tensor:
        """The student's prediction, with gradient."""

    def teacher_eps(self, noisy: torch.Tensor, t: torch.Tensor, cond: "Conditioning") -> torch.Tensor:
        """The frozen S_{t-1}'s prediction, without gradient."""


@dataclass
class LoraExport:
    """A snapshot (or part of it) as one plain LoRA of the UNet, which export.py writes in
    diffusers and kohya format."""

    weights: dict[str, torch.Tensor]  # peft state-dict keys, as in adapter.safetensors
    rank: int
    alpha: float  # peft's scaling is alpha / rank
    token: str | None = None  # the only token whose prompts it serves; None: every prompt


@dataclass
class StepContext:
    """What a regularizer may look at during one optimizer step."""

    unet: torch.nn.Module
    noisy_latents: torch.Tensor
    timesteps: torch.Tensor
    conditioning: "Conditioning"
    prediction: torch.Tensor
    student: "EpsFn"  # with grad
    teacher: "EpsFn"  # no grad
    step: int


class Method:
    name: ClassVar[str]
    #: start each concept from a fresh adapter instead of continuing S_{t-1}'s
    fresh_adapter: ClassVar[bool] = False
    #: False for methods that fold the step's adapter into their state (merge, clora): the
    #: snapshot then keeps no adapter, so the next teacher is base + folded update alone
    keeps_adapter: ClassVar[bool] = True
    #: init of the new identifier token: "class_word" (mean embedding of the class word's
    #: pieces) or "random" (C-LoRA); see Backbone.initial_embedding
    token_init: ClassVar[str] = "class_word"
    #: what the exported files (export.py) leave out of the snapshot's meaning, for their
    #: README; empty when plain diffusers generates what the project generates
    export_note: ClassVar[str] = ""

    # -- training -----------------------------------------------------------------------
    def prepare(self, student: TrainingView, prev: "Snapshot", concept: ConceptView,
                latents: torch.Tensor) -> None:
        """Called once before the first optimizer step, with teacher and student in place and
        the concept's latents encoded (photos, then their mirror images)."""

    def conditioning(self, picked: torch.Tensor):
        """Context manager around the student's denoising forward on latents[picked]."""
        return nullcontext()

    def trainable_parameters(self) -> list[torch.Tensor]:
        """Parameters of the method's own, trained beside the adapter (routed: its gates);
        read after `prepare`."""
        return []

    def regularizer(self, ctx: StepContext) -> torch.Tensor | None:
        """Extra loss for this optimizer step; None adds nothing."""
        return None

    def state_after_step(self, unet, prev: "Snapshot", concept: ConceptView) -> dict[str, torch.Tensor]:
        """Tensors to keep in the snapshot for the next step (Fisher, anchors, adapters, ...)."""
        return {}

    def train_log(self) -> dict:
        """Method figures for the step's train_log.json (e.g. update norms); read after
        `state_after_step`. Wall times go to `timing`: the same inputs must give the same
        train_log.json."""
        return {}

    def timing(self) -> dict:
        """Method wall seconds for the step's timing.json (e.g. the Fisher pass)."""
        return {}

    # -- generation: what a snapshot of this method means ---------------------------------
    @classmethod
    def fold_into_base(cls, unet, snap: "Snapshot") -> None:
        """Change the base weights the way the snapshot says (merge, clora: add the folded
        updates). Training calls it too: the teacher S_{t-1} is built on top of it."""

    @classmethod
    def load_for_generation(cls, backbone: "Backbone", snap: "Snapshot") -> None:
        """Turn the freshly loaded base into S_t: base changes, tokens, the snapshot's adapter."""
        cls.fold_into_base(backbone.unet, snap)
        backbone.add_tokens(snap.tokens)
        if snap.adapter:
            add_lora(backbone.unet, snap.lora, STUDENT, snap.adapter)
            backbone.unet.set_adapter(STUDENT)

    @classmethod
    def prompt_scope(cls, backbone: "Backbone", snap: "Snapshot", token: str | None):
        """Context manager around generating a prompt that holds `token` (None: no learned
        token, e.g. a class prompt): pick the concept's adapter, attach its context, ..."""
        return nullcontext()

    @classmethod
    def lora_exports(cls, snap: "Snapshot", unet) -> list[LoraExport]:
        """The snapshot as plain LoRAs: by default its adapter, none if it keeps none.
        `unet` has the base model's architecture, for shapes only (export.py builds it on
        the meta device)."""
        if not snap.adapter:
            return []
        return [LoraExport(snap.adapter, snap.lora["rank"], snap.lora["alpha"])]
