"""LoRA adapters on the UNet (peft through diffusers); identifier tokens are backbone.py's.

The teacher is a second *named* peft adapter on the same UNet, never a deep copy: for SD-1.5
a copy would double memory, while an extra rank-r adapter costs a few MB.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

STUDENT, TEACHER = "student", "teacher"


def lora_settings(rank: int, alpha: float, targets: list[str]) -> dict:
    return {"rank": int(rank), "alpha": float(alpha), "targets": list(targets)}


def add_lora(unet, settings: dict, name: str, weights: dict[str, torch.Tensor] | None) -> None:
    """Attach adapter `name`; with no weights it starts as the identity (LoRA B = 0)."""
    config = LoraConfig(r=settings["rank"], lora_alpha=settings["alpha"],
                        target_modules=settings["targets"], init_lora_weights=True)
    with warnings.catch_warnings():  # a second adapter (teacher beside student) is intended
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        unet.add_adapter(config, adapter_name=name)
    if weights:
        set_adapter_weights(unet, name, weights)


def set_adapter_weights(unet, name: str, weights: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(unet, weights, adapter_name=name)
    if result.unexpected_keys:
        raise ValueError(f"adapter weights do not fit the UNet: {result.unexpected_keys[:3]}")


def adapter_weights(unet, name: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet, adapter_name=name).items()}


def named_adapter_parameters(unet, name: str) -> dict[str, torch.nn.Parameter]:
    """Adapter `name`'s parameters under their peft state-dict keys (the keys of
    adapter_weights: the adapter name dropped, as get_peft_model_state_dict does)."""
    return {n.replace(f".{name}", ""): p for n, p in unet.named_parameters()
            if f".{name}." in n and "lora_" in n}


def adapter_parameters(unet, name: str) -> list[torch.nn.Parameter]:
    return list(named_adapter_parameters(unet, name).values())


@contextmanager
def using_adapter(unet, name: str, restore: str):
    """Run a block with adapter `name` active, then switch back to `restore`.

    peft's set_adapter also flips requires_grad, so restoring before backward() matters.
    """
    unet.set_adapter(name)
    try:
        yield
    finally:
        unet.set_adapter(restore)
