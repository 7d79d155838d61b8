from __future__ import annotations

from .base import Method


class Naive(Method):
    """Sequential fine-tuning of one LoRA adapter with no protection against forgetting:
    the lower bound every other method is compared with."""

    name = "naive"
