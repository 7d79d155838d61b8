"""Live reports during training are paced by the clock (tasks/throttle.py)."""
from __future__ import annotations

import time

from tasks.throttle import Throttle


def test_due_at_most_once_per_interval():
    throttle = Throttle(0.2)
    assert not throttle.due()  # nothing right after the start: the first report waits too
    time.sleep(0.25)
    assert throttle.due()
    assert not throttle.due()  # the interval restarts at each report
    time.sleep(0.25)
    assert throttle.due()
