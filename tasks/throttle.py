"""How often a training step reports while it runs: by the clock, not by step count, so a slow
CPU step and a fast GPU step both send a few requests a minute (each one an HTTP round trip to
the Prefect or MLflow server, paid inside the training loop)."""
from __future__ import annotations

import time

UPDATE_SECONDS = 5.0


class Throttle:
    """`due()` is true at most once per `seconds`; the first time `seconds` after creation."""

    def __init__(self, seconds: float = UPDATE_SECONDS):
        self.seconds, self.last = seconds, time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True
