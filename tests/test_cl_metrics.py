import pytest

from lifelong_diffusion.cl_metrics import (bootstrap_intervals, format_summary, relevant_drift,
                                         score_matrix, summarize)

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


def with_samples(samples: list[float]) -> dict:
    return {"attr_acc": sum(samples) / len(samples), "samples": {"attr_acc": samples}}


def sampled_run(cells: list[list[list[float] | None]], base_class, final_class):
    """Base and step metrics whose R (attr_acc) has these per-seed values, plus one class
    prompt scored by the base and every step (the last step's values given)."""
    names = [f"c{j}" for j in range(len(cells))]
    base = {"concept": "base", "per_concept": {}, "class_prompts": {"star": with_samples(base_class)}}
    steps = [{"concept": names[t],
              "per_concept": {names[j]: with_samples(v) for j, v in enumerate(row) if v is not None},
              "class_prompts": {"star": with_samples(final_class)}} for t, row in enumerate(cells)]
    return base, steps


def test_identical_samples_give_zero_width_intervals_at_the_point_value():
    base, steps = sampled_run([[[0.75] * 4, None], [[0.25] * 4, [0.5] * 4]], [1.0] * 4, [0.5] * 4)
    ci = bootstrap_intervals(base, steps, ["attr_acc"], resamples=50)
    assert ci["attr_acc"]["A"] == pytest.approx([0.375, 0.375])
    assert ci["attr_acc"]["F"] == pytest.approx([0.5, 0.5])
    assert ci["attr_acc"]["BWT"] == pytest.approx([-0.5, -0.5])
    assert ci["drift"]["attr_acc"] == pytest.approx([0.5, 0.5])


def test_interval_contains_the_point_estimate_and_is_reproducible():
    cells = [[[1, 1, 0, 1, 0, 1], None], [[0, 1, 0, 0, 1, 0], [1, 1, 1, 0, 1, 1]]]
    base, steps = sampled_run(cells, [1, 1, 1, 1, 0, 1], [0, 1, 0, 1, 1, 0])
    ci = bootstrap_intervals(base, steps, ["attr_acc"])
    point = summarize(score_matrix(steps, "attr_acc")[1])
    for k in ("A", "LA", "BWT"):  # linear in the cell means; F (a max) is biased upwards
        lo, hi = ci["attr_acc"][k]
        assert lo < point[k] < hi, k
    assert ci["attr_acc"]["F"][0] < ci["attr_acc"]["F"][1]
    lo, hi = ci["drift"]["attr_acc"]
    assert lo < relevant_drift(base, steps[-1], "attr_acc")["drift"] < hi
    assert bootstrap_intervals(base, steps, ["attr_acc"]) == ci
    assert bootstrap_intervals(base, steps, ["attr_acc"], seed=1) != ci


def test_resampling_is_paired_across_steps():
    """A concept scored the same way at every step has no forgetting in any resample,
    however much its samples vary: each resample uses the same seeds for every step."""
    samples = [1, 0, 0, 1, 1, 0, 1, 0]
    base, steps = sampled_run([[samples, None], [samples, samples]], samples, samples)
    ci = bootstrap_intervals(base, steps, ["attr_acc"])
    assert ci["attr_acc"]["F"] == [0.0, 0.0] and ci["attr_acc"]["BWT"] == [0.0, 0.0]
    assert ci["drift"]["attr_acc"] == [0.0, 0.0]
    assert ci["attr_acc"]["A"][0] < ci["attr_acc"]["A"][1]  # A itself does vary with the seeds


def test_undefined_figures_have_no_interval():
    base, steps = sampled_run([[[1, 0, 1]]], [1, 1, 1], [0, 1, 1])
    ci = bootstrap_intervals(base, steps, ["attr_acc"])
    assert ci["attr_acc"]["F"] is None and ci["attr_acc"]["BWT"] is None
    assert ci["attr_acc"]["A"] is not None


def test_no_intervals_without_per_sample_values():
    base, steps = sampled_run([[[1, 0, 1]]], [1, 1, 1], [0, 1, 1])
    del steps[0]["class_prompts"]["star"]["samples"]  # one score of an old metrics.json
    assert bootstrap_intervals(base, steps, ["attr_acc"]) is None
    assert bootstrap_intervals({**base, "class_prompts": {}}, [{"concept": "a", "per_concept":
                               {"a": {"attr_acc": 0.5}}, "class_prompts": {}}], ["attr_acc"]) is None


def test_format_summary_shows_intervals():
    line = format_summary("attr_acc", {"A": 0.31, "LA": 0.5, "F": None, "BWT": None,
                                       "A_ci": [0.25, 0.37], "LA_ci": [0.4, 0.6],
                                       "F_ci": None, "BWT_ci": None})
    assert line == "attr_acc: A=0.310 [0.250, 0.370]  LA=0.500 [0.400, 0.600]  F=n/a  BWT=n/a"
