import pytest

from lifelong_diffusion.cl_metrics import format_summary, score_matrix, summarize

R = [[0.9, None, None],
     [0.7, 0.8, None],
     [0.5, 0.6, 0.7]]


def test_summary_by_hand():
    s = summarize(R)
    assert s["A"] == pytest.approx((0.5 + 0.6 + 0.7) / 3)
    assert s["LA"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    # F: concept 0 best before the end 0.9 -> 0.5; concept 1 best 0.8 -> 0.6
    assert s["F"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.6)) / 2)
    assert s["BWT"] == pytest.approx(((0.5 - 0.9) + (0.6 - 0.8)) / 2)


def test_forgetting_uses_the_best_earlier_score_not_the_first():
    s = summarize([[0.5, None, None],
                   [0.9, 0.4, None],
                   [0.6, 0.4, 0.8]])
    assert s["F"] == pytest.approx(((0.9 - 0.6) + (0.4 - 0.4)) / 2)


def test_single_step_has_no_forgetting_figures():
    assert summarize([[0.7]]) == {"A": 0.7, "LA": 0.7, "F": None, "BWT": None}


def test_score_matrix_from_step_metrics():
    steps = [{"concept": "a", "per_concept": {"a": {"clip_i": 0.9}}},
             {"concept": "b", "per_concept": {"a": {"clip_i": 0.7}, "b": {"clip_i": 0.8}}}]
    names, rows = score_matrix(steps, "clip_i")
    assert names == ["a", "b"]
    assert rows == [[0.9, None], [0.7, 0.8]]


def test_format_summary_marks_undefined_figures():
    line = format_summary("clip_i", {"A": 0.7, "LA": 0.7, "F": None, "BWT": None, "R": [[0.7]]})
    assert line == "clip_i: A=0.700  LA=0.700  F=n/a  BWT=n/a"
