"""The backbone: one loaded diffusers text-to-image pipeline and everything that differs
between model families, behind one small interface.

Training, every method, the DC score and sampling call `encode` (prompts -> Conditioning)
and `predict` (the UNet call) and never touch a text encoder or the UNet's signature, so a
family is added here and nowhere else. Families:
- SD-1.x / SD-2.x (`StableDiffusionPipeline`): one CLIP text encoder; the UNet reads its last
  hidden states.
- SDXL (`StableDiffusionXLPipeline`): two text encoders; the UNet reads the concatenation of
  their penultimate hidden states, plus the second encoder's pooled embedding and six "time
  ids" (original size, crop corner, target size) as `added_cond_kwargs`, exactly as
  diffusers' SDXL pipeline builds them.

An identifier token has one embedding row per text encoder. A snapshot keeps them as one
tensor, the rows concatenated in encoder order (768 + 1280 values for SDXL), so the snapshot
format is the same for every family.

Precision: the frozen UNet, the bulk of the weights and of the compute, is stored in the
requested low precision; the text encoders (they hold the trainable token rows, whose
AdamW state must be fp32) and the VAE (SDXL's overflows in fp16) stay fp32; `autocast()`
runs the forward passes in the low precision. Attention is PyTorch SDPA (diffusers'
AttnProcessor2_0, the default on torch 2).
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from .base_model import BaseModelError, resolve_base_model

PIPELINES = {"StableDiffusionPipeline": StableDiffusionPipeline,
             "StableDiffusionXLPipeline": StableDiffusionXLPipeline}
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

EpsFn = Callable[[torch.Tensor, torch.Tensor, "Conditioning"], torch.Tensor]


@dataclass
class Conditioning:
    """Text conditioning of a batch of prompts, one row per prompt: the token states the
    UNet cross-attends to and, for SDXL, the pooled embeddings and time ids. Indexing and
    repeating act on every part alike, so methods handle it like one tensor."""

    states: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor | None = None  # (B, P), SDXL
    time_ids: torch.Tensor | None = None  # (B, 6), SDXL

    def __len__(self) -> int:
        return len(self.states)

    def _map(self, fn) -> "Conditioning":
        return Conditioning(*(None if t is None else fn(t)
                              for t in (self.states, self.pooled, self.time_ids)))

    def __getitem__(self, index) -> "Conditioning":
        return self._map(lambda t: t[index])

    def repeat(self, n: int) -> "Conditioning":
        """The whole batch n times over (like Tensor.repeat on dim 0)."""
        return self._map(lambda t: t.repeat(n, *[1] * (t.ndim - 1)))

    def repeat_interleave(self, n: int) -> "Conditioning":
        """Each row n times in a row."""
        return self._map(lambda t: t.repeat_interleave(n, 0))

    def expand(self, n: int) -> "Conditioning":
        """A one-row conditioning as n rows (no copy)."""
        return self._map(lambda t: t.expand(n, *t.shape[1:]))

    def to(self, *args, **kwargs) -> "Conditioning":
        return self._map(lambda t: t.to(*args, **kwargs))

    @staticmethod
    def cat(items: list["Conditioning"]) -> "Conditioning":
        first = items[0]
        parts = [None if getattr(first, f) is None else torch.cat([getattr(c, f) for c in items])
                 for f in ("states", "pooled", "time_ids")]
        return Conditioning(*parts)

    def unet_kwargs(self) -> dict:
        if self.pooled is None:
            return {"encoder_hidden_states": self.states}
        return {"encoder_hidden_states": self.states,
                "added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": self.time_ids}}


def unet_forward(unet, noisy: torch.Tensor, t, cond: Conditioning) -> torch.Tensor:
    """The one UNet call of the project: the prediction for `noisy` at timestep(s) `t`."""
    return unet(noisy, t, **cond.unet_kwargs()).sample


def pipeline_class(folder: Path):
    index = Path(folder) / "model_index.json"
    name = json.loads(index.read_text()).get("_class_name")
    if name not in PIPELINES:
        raise BaseModelError(f"{index}: pipeline class {name} is not supported; base.model in "
                             f"params.yaml must be one of: {', '.join(PIPELINES)} "
                             "(SD-1.x, SD-2.x or SDXL).")
    return PIPELINES[name]


def native_resolution(folder: Path) -> int:
    """The image size a diffusers folder's UNet and VAE were built for, from their configs
    (what Backbone.resolution defaults to, without loading any weight)."""
    unet = json.loads((Path(folder) / "unet" / "config.json").read_text())
    vae = json.loads((Path(folder) / "vae" / "config.json").read_text())
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


def parse_precision(precision: str, device: str) -> torch.dtype:
    """`auto`: bf16 on a GPU that has it, fp32 elsewhere (CPU training stays exact)."""
    if precision == "auto":
        gpu_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if gpu_bf16 else torch.float32
    if precision not in PRECISIONS:
        raise ValueError(f"precision '{precision}' in params.yaml: use one of auto, "
                         f"{', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


class Backbone:
    """A base pipeline with every weight frozen; adapters and tokens are added on top."""

    def __init__(self, pipe, dtype: torch.dtype = torch.float32, resolution: int | None = None):
        self.pipe, self.dtype = pipe, dtype
        self.unet, self.vae, self.scheduler = pipe.unet, pipe.vae, pipe.scheduler
        self.is_sdxl = isinstance(pipe, StableDiffusionXLPipeline)
        self.tokenizers = [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t]
        self.text_encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e]
        self.resolution = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        # Read once: diffusers' ModelMixin.device walks every submodule (group offloading
        # check), 5 ms per call on the world UNet, which made each training step 5% slower.
        self.device = next(pipe.unet.parameters()).device

    @classmethod
    def load(cls, spec: str, device: str = "cpu", precision: str = "fp32",
             allow_download: bool = False, resolution: int | None = None) -> "Backbone":
        # Loading bars for a handful of files are noise next to the training progress bar.
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        folder = resolve_base_model(spec, allow_download)
        kind = pipeline_class(folder)
        extra = ({"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
                 if kind is StableDiffusionPipeline else {})
        pipe = kind.from_pretrained(folder, dtype=torch.float32, **extra)
        pipe.set_progress_bar_config(disable=True)
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
        dtype = parse_precision(precision, device)
        pipe = pipe.to(device)
        if dtype != torch.float32:
            pipe.unet.to(dtype)
        return cls(pipe, dtype, resolution)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.resolution // self.pipe.vae_scale_factor
        return (self.unet.config.in_channels, size, size)

    def autocast(self):
        """The forward passes in the backbone's precision (nothing to do in fp32)."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def predict(self, noisy: torch.Tensor, t, cond: Conditioning) -> torch.Tensor:
        return unet_forward(self.unet, noisy, t, cond)

    # -- text -------------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> list[torch.Tensor]:
        """Input ids per text encoder, padded to its context length."""
        return [tok(prompts, padding="max_length", max_length=tok.model_max_length,
                    truncation=True, return_tensors="pt").input_ids for tok in self.tokenizers]

    def encode(self, prompts: list[str]) -> Conditioning:
        """Conditioning of `prompts`; with gradient to the token rows when grad is enabled."""
        ids = [i.to(self.device) for i in self.tokenize(prompts)]
        if not self.is_sdxl:
            return Conditioning(self.text_encoders[0](ids[0])[0])
        outputs = [enc(i, output_hidden_states=True) for enc, i in zip(self.text_encoders, ids)]
        states = torch.cat([out.hidden_states[-2] for out in outputs], -1)
        return Conditioning(states, outputs[-1][0], self._time_ids(len(prompts)))

    def unconditional(self, n: int = 1) -> Conditioning:
        """The classifier-free-guidance branch as the pipeline builds it: the empty prompt,
        or zeros where an SDXL model is configured to zero it (force_zeros_for_empty_prompt)."""
        cond = self.encode([""])
        if self.is_sdxl and self.pipe.config.force_zeros_for_empty_prompt:
            cond = replace(cond, states=torch.zeros_like(cond.states),
                           pooled=torch.zeros_like(cond.pooled))
        return cond.expand(n)

    def _time_ids(self, n: int) -> torch.Tensor:
        size = self.resolution
        return torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32,
                            device=self.device).expand(n, 6)

    # -- identifier tokens --------------------------------------------------------------
    @property
    def embedding_tables(self) -> list[torch.nn.Parameter]:
        return [enc.get_input_embeddings().weight for enc in self.text_encoders]

    def add_tokens(self, embeddings: dict[str, torch.Tensor]) -> list[int]:
        """Register identifier tokens in every tokenizer and text encoder, each embedding the
        concatenation of its rows in encoder order; returns the ids in the first tokenizer
        (every tokenizer gives a new token the same id only if their vocabularies agree, so
        callers use `token_ids` per encoder)."""
        if not embeddings:
            return []
        tokens = list(embeddings)
        for tok, enc, part in zip(self.tokenizers, self.text_encoders, self._split(embeddings)):
            tok.add_tokens(tokens)
            enc.resize_token_embeddings(len(tok), mean_resizing=False)
            table = enc.get_input_embeddings().weight
            with torch.no_grad():
                for token_id, token in zip(tok.convert_tokens_to_ids(tokens), tokens):
                    table[token_id] = part[token].to(table)
        return self.tokenizers[0].convert_tokens_to_ids(tokens)

    def token_ids(self, token: str) -> list[int]:
        """The token's id in each tokenizer, in encoder order."""
        return [tok.convert_tokens_to_ids(token) for tok in self.tokenizers]

    def token_embedding(self, token: str) -> torch.Tensor:
        """The token's rows of every text encoder, concatenated (what a snapshot keeps)."""
        return torch.cat([table[i].detach().float().cpu().clone()
                          for table, i in zip(self.embedding_tables, self.token_ids(token))])

    def _split(self, embeddings: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        widths = [table.shape[1] for table in self.embedding_tables]
        for token, row in embeddings.items():
            if row.shape != (sum(widths),):
                raise ValueError(f"the embedding of {token} has {tuple(row.shape)} values but "
                                 f"this base model's text encoders need {sum(widths)} "
                                 f"({' + '.join(map(str, widths))}): the snapshot was trained "
                                 "on another base model.")
        return [{tok: row.split(widths)[i] for tok, row in embeddings.items()}
                for i in range(len(widths))]

    def word_embedding(self, word: str) -> torch.Tensor:
        """Mean input embedding of a word's pieces in each encoder: the usual token init."""
        rows = []
        for tok, table in zip(self.tokenizers, self.embedding_tables):
            ids = tok(word, add_special_tokens=False).input_ids
            rows.append(table[ids].mean(0).detach().float().cpu())
        return torch.cat(rows)

    def initial_embedding(self, kind: str, class_word: str) -> torch.Tensor:
        """Init of a new identifier token: "class_word" (word_embedding) or "random" (C-LoRA).

        The random init draws each encoder's row from N(0, sigma^2), sigma the std of that
        encoder's table, so the token has the norm of an ordinary word and no class prior; it
        uses the global torch RNG, which train_concept seeds, so it is reproducible.
        """
        if kind == "class_word":
            return self.word_embedding(class_word)
        if kind == "random":
            return torch.cat([torch.randn(t.shape[1]) * t.detach().float().std().cpu()
                              for t in self.embedding_tables])
        raise ValueError(f"unknown token_init '{kind}': use 'class_word' or 'random'")
