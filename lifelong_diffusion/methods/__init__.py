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
from .routed import Routed

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Naive, Independent, Merge, Clora, LfsKD, Lfs, Ewc, EwcDC, Dsc, Routed)}


def build_method(name: str, params: dict | None = None) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown train.method '{name}' in params.yaml; choose one of: "
                         f"{', '.join(sorted(METHODS))}")
    return METHODS[name](**(params or {}))


def snapshot_method(snap) -> type[Method]:
    """The class whose generation hooks give `snap` its meaning (S_0: the base as it is)."""
    if snap.step == 0:
        return Method
    if snap.method not in METHODS:
        raise ValueError(f"snapshot '{snap.name}' was written by method '{snap.method}', which "
                         f"this version does not have ({', '.join(sorted(METHODS))})")
    return METHODS[snap.method]


__all__ = ["METHODS", "Method", "StepContext", "build_method", "snapshot_method"]
