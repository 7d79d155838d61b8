"""`independent`: the upper bound, a fresh adapter per concept kept apart (docs/methods.md#independent)."""
from __future__ import annotations

from contextlib import contextmanager

from ..lora import STUDENT, adapter_weights, set_adapter_weights
from .base import LoraExport, Method

TOKEN_ADAPTER = "adapter/"  # state key prefix: adapter/<token>/<peft key>


def token_adapter(snap, token: str) -> dict:
    """The adapter kept for one concept's token; empty if the snapshot keeps none."""
    prefix = f"{TOKEN_ADAPTER}{token}/"
    return {k[len(prefix):]: v for k, v in snap.state.items() if k.startswith(prefix)}


class Independent(Method):
    """A fresh adapter per concept, kept apart and chosen by the concept's token at inference
    (prompts with no learned token use the base model). Nothing is ever forgotten, at the
    price of storage that grows with every concept and no sharing."""

    name = "independent"
    fresh_adapter = True

    def state_after_step(self, unet, prev, concept):
        own = {f"{TOKEN_ADAPTER}{concept.token}/{k}": v for k, v in adapter_weights(unet, STUDENT).items()}
        return {**prev.state, **own}

    @classmethod
    @contextmanager
    def prompt_scope(cls, backbone, snap, token):
        """The concept's own adapter for its prompt; the bare base for a prompt without a
        learned token (a class prompt)."""
        unet = backbone.unet
        if token is None:
            unet.disable_adapters()
        else:
            unet.enable_adapters()
            set_adapter_weights(unet, STUDENT, token_adapter(snap, token))
        try:
            yield
        finally:
            unet.enable_adapters()

    @classmethod
    def lora_exports(cls, snap, unet) -> list[LoraExport]:
        """One LoRA per concept, for its own token's prompts only."""
        return [LoraExport(token_adapter(snap, c["token"]), snap.lora["rank"], snap.lora["alpha"],
                           c["token"]) for c in snap.concepts]
