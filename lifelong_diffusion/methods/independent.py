from __future__ import annotations

from ..lora import STUDENT, adapter_weights
from ..snapshot import TOKEN_ADAPTER
from .base import Method


class Independent(Method):
    """The upper bound: a fresh adapter per concept, kept apart and chosen by the concept's
    token at inference (prompts with no learned token use the base model). Nothing is ever
    forgotten, at the price of storage that grows with every concept and no sharing."""

    name = "independent"
    fresh_adapter = True

    def state_after_step(self, unet, prev, concept):
        own = {f"{TOKEN_ADAPTER}{concept.token}/{k}": v for k, v in adapter_weights(unet, STUDENT).items()}
        return {**prev.state, **own}
