"""LoRA adapters on the UNet (peft through diffusers) and identifier-token embeddings.

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


def add_tokens(tokenizer, text_encoder, embeddings: dict[str, torch.Tensor]) -> list[int]:
    """Register identifier tokens with their embeddings; returns their ids in order."""
    if not embeddings:
        return []
    tokens = list(embeddings)
    tokenizer.add_tokens(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token_id, token in zip(ids, tokens):
            table[token_id] = embeddings[token].to(table)
    return ids


def word_embedding(tokenizer, text_encoder, word: str) -> torch.Tensor:
    """Mean input embedding of a word's BPE pieces: the usual init for a new identifier."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    return text_encoder.get_input_embeddings().weight[ids].mean(0).detach().clone()


def initial_embedding(kind: str, tokenizer, text_encoder, class_word: str) -> torch.Tensor:
    """Init of a new identifier token: "class_word" (word_embedding) or "random" (C-LoRA).

    The random init draws from N(0, sigma^2) with sigma the std of the embedding table, so the
    token has the norm of an ordinary word and carries no class prior; it uses the global
    torch RNG, which train_concept seeds, so it is reproducible.
    """
    if kind == "class_word":
        return word_embedding(tokenizer, text_encoder, class_word)
    if kind == "random":
        table = text_encoder.get_input_embeddings().weight.detach()
        return torch.randn(table.shape[1]).to(table) * table.std()
    raise ValueError(f"unknown token_init '{kind}': use 'class_word' or 'random'")
