"""Continual-learning methods, one small class each, selected by `train.method` in params.yaml."""
from __future__ import annotations

from .base import Method, StepContext
from .clora import Clora
from .dsc import Dsc
from .ewc import Ewc, EwcDC
from .independent import Independent
from .lfs import Lfs
from .lfs_kd import LfsKD
from .merge import Merge
from .naive import Naive

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Naive, Independent, Merge, Clora, LfsKD, Lfs, Ewc, EwcDC, Dsc)}


def build_method(name: str, params: dict | None = None) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown train.method '{name}' in params.yaml; choose one of: "
                         f"{', '.join(sorted(METHODS))}")
    return METHODS[name](**(params or {}))


__all__ = ["METHODS", "Method", "StepContext", "build_method"]
