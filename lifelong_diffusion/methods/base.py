"""The interface every method implements: a regularizer added to the denoising loss, and the
state it carries to the next step. The shared step (train.py) owns everything else."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar

import torch

if TYPE_CHECKING:
    from ..snapshot import Snapshot
    from ..train import Concept, Student


@dataclass
class StepContext:
    """What a regularizer may look at during one optimizer step."""

    unet: torch.nn.Module
    noisy_latents: torch.Tensor
    timesteps: torch.Tensor
    text_embeddings: torch.Tensor
    prediction: torch.Tensor
    teacher: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # no-grad eps
    step: int


class Method:
    name: ClassVar[str]
    #: start each concept from a fresh adapter instead of continuing S_{t-1}'s
    fresh_adapter: ClassVar[bool] = False
    #: False for methods that fold the step's adapter into their state (merge, clora): the
    #: snapshot then keeps no adapter, so the next teacher is base + folded update alone
    keeps_adapter: ClassVar[bool] = True
    #: init of the new identifier token: "class_word" (mean embedding of the class word's
    #: pieces) or "random" (C-LoRA); see lora.initial_embedding
    token_init: ClassVar[str] = "class_word"

    def prepare(self, student: "Student", prev: "Snapshot", concept: "Concept",
                latents: torch.Tensor) -> None:
        """Called once before the first optimizer step, with teacher and student in place and
        the concept's latents encoded (photos, then their mirror images)."""

    def conditioning(self, picked: torch.Tensor):
        """Context manager around the student's denoising forward on latents[picked]."""
        return nullcontext()

    def regularizer(self, ctx: StepContext) -> torch.Tensor | None:
        """Extra loss for this optimizer step; None adds nothing."""
        return None

    def state_after_step(self, unet, prev: "Snapshot", concept: "Concept") -> dict[str, torch.Tensor]:
        """Tensors to keep in the snapshot for the next step (Fisher, anchors, adapters, ...)."""
        return {}

    def train_log(self) -> dict:
        """Method figures for the step's train_log.json (e.g. Fisher-pass seconds, update
        norms); read after `state_after_step`."""
        return {}
