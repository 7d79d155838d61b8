"""The orchestration benchmark's summary over rounds: runs alternate which side goes first,
and the published figures are those of the mean run on each side."""
from __future__ import annotations

from benchmarks.orchestration import figures, mean_of


def run(seconds: float, training: float, **extra) -> dict:
    return {"seconds": seconds, "training": training, "server_start_seconds": None,
            "stages": {"startup": 2.0, "train": training + 10}, "phases": {"startup": 1.0, "train": training},
            "in_worker": {"train": {"flow": training + 5, "after": 1.0}}, "cpu": {"worker": {"user": seconds, "system": 1.0}},
            **extra}


def test_mean_of_averages_nested_figures_key_by_key():
    assert mean_of([{"a": 1.0, "b": {"c": 2.0}}, {"a": 3.0, "b": {"c": 4.0}}]) == {"a": 2.0, "b": {"c": 3.0}}
    assert mean_of([None, 5.0]) is None  # a server start not seen in one run is not averaged
    assert mean_of([{"a": 1.0}, {"a": 3.0, "only": 7.0}]) == {"a": 2.0, "only": 7.0}


def test_figures_of_the_mean_runs_give_the_ratio_of_total_seconds():
    pipelines, plains = [run(110.0, 80.0), run(130.0, 100.0)], [run(100.0, 80.0), run(100.0, 90.0)]
    result = figures(mean_of(pipelines), mean_of(plains))
    assert result["ratio"] == round(240 / 200, 3)
    # the pipeline with the plain run's loop seconds (85) in place of its own (90)
    assert result["ratio_training_matched"] == round((120 - 90 + 85) / 100, 3)
    assert result["extra_seconds"] == {"startup": 1.0, "train": 15.0}
