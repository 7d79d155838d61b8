"""`merge`: a fresh adapter per concept, merged into the running weights after the step.

No regularizer: earlier concepts are protected only by each update being small and trained
on top of the merged model. `weight` scales each step's update as it is merged (1.0: the
merged model computes exactly what the student computed at the end of its step; below 1
trades the new concept's fidelity for less interference with earlier ones).
"""
from __future__ import annotations

from .folding import Folding


class Merge(Folding):
    name = "merge"

    def __init__(self, weight: float = 1.0):
        self.fold_weight = weight
