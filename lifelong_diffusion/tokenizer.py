"""An offline CLIP tokenizer built from the BPE vocabulary that ships inside open_clip_torch.

No machine here can reach the Hugging Face Hub, yet Stable-Diffusion pipelines need a
`CLIPTokenizer`. open_clip bundles the exact BPE merges CLIP was trained with, so we rebuild
the Hugging Face vocabulary from them. Note: transformers 5's `CLIPTokenizer(vocab_file,
merges_file)` silently builds a 3-token tokenizer; passing the vocabulary and merges as
Python objects is what works (a test compares ids with open_clip's own tokenizer).
"""
from __future__ import annotations

import gzip

from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import CLIPTokenizer

CONTEXT_LENGTH = 77  # CLIP's context; SD pipelines pad every prompt to it
_N_MERGES = 49152 - 256 - 2  # the slice open_clip's SimpleTokenizer uses


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Rebuild CLIP's vocabulary in the order open_clip's SimpleTokenizer assigns ids."""
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_clip_tokenizer(max_length: int = CONTEXT_LENGTH) -> CLIPTokenizer:
    """A Hugging Face CLIPTokenizer whose ids equal open_clip's for the same text."""
    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
