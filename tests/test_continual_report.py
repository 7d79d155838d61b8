"""The continual report from hand-made metrics: drift, curves.csv rows, pictures."""
from __future__ import annotations

import csv
import json
import re

import pytest
from PIL import Image

from lifelong_diffusion.cl_metrics import format_report, relevant_drift
from lifelong_diffusion.continual import continual_report


def step(n, concept, per_concept, class_prompts):
    return {"step": n, "concept": concept, "meaningful": True, "per_concept": per_concept,
            "class_prompts": class_prompts}


BASE = step(0, "base", {}, {"star": {"attr_acc": 1.0, "clip_t": 0.30},
                            "heart": {"attr_acc": 0.5, "clip_t": 0.20}})
STEPS = [
    step(1, "a", {"a": {"attr_acc": 0.8, "clip_i": 0.9, "clip_t": 0.3}},
         {"star": {"attr_acc": 0.75, "clip_t": 0.25}}),
    step(2, "b", {"a": {"attr_acc": 0.4, "clip_i": 0.7, "clip_t": 0.3},
                  "b": {"attr_acc": 0.6, "clip_i": 0.8, "clip_t": 0.3}},
         {"star": {"attr_acc": 0.5, "clip_t": 0.26}, "heart": {"attr_acc": 0.5, "clip_t": 0.1}}),
]


def test_drift_is_base_minus_final_per_class_prompt():
    d = relevant_drift(BASE, STEPS[-1], "attr_acc")
    assert d["per_class"] == {"star": pytest.approx(0.5), "heart": pytest.approx(0.0)}
    assert d["drift"] == pytest.approx(0.25)
    assert relevant_drift(BASE, STEPS[-1], "clip_i") is None  # class prompts carry no clip_i


def test_report_files(tmp_path):
    summary = continual_report(BASE, STEPS, tmp_path)
    assert summary["attr_acc"]["R"] == [[0.8, None], [0.4, 0.6]]
    assert summary["attr_acc"]["F"] == pytest.approx(0.4)
    assert summary["drift"]["clip_t"]["drift"] == pytest.approx(((0.30 - 0.26) + (0.20 - 0.1)) / 2)
    assert json.loads((tmp_path / "continual.json").read_text()) == json.loads(json.dumps(summary))

    rows = list(csv.DictReader(open(tmp_path / "curves.csv")))
    assert [r["after_step"] for r in rows] == ["0", "0", "1", "1", "2", "2", "2", "2"]
    assert rows[0] == {"after_step": "0", "prompt": "class: star", "attr_acc": "1.0", "pattern_acc": "",
                       "clip_i": "", "clip_t": "0.3", "dino": ""}
    assert {r["prompt"] for r in rows if r["after_step"] == "2"} == {"a", "b", "class: star", "class: heart"}

    for name, min_width in (("R_heatmap.png", 3 * 300), ("curves.png", 3 * 300)):
        image = Image.open(tmp_path / name)
        assert image.width >= min_width  # one panel per score
        assert len(image.convert("L").getcolors(maxcolors=4096) or []) > 10  # something was drawn


def sampled(scores: dict) -> dict:
    """The same scores with per-seed values around them (two seeds: mean -+ 0.1)."""
    return {**scores, "samples": {k: [v - 0.1, v + 0.1] for k, v in scores.items()}}


def with_samples(metrics: dict) -> dict:
    return {**metrics, **{group: {name: sampled(scores) for name, scores in metrics[group].items()}
                          for group in ("per_concept", "class_prompts")}}


def test_report_carries_intervals_next_to_each_figure(tmp_path):
    summary = continual_report(with_samples(BASE), [with_samples(s) for s in STEPS], tmp_path)
    for score in ("attr_acc", "clip_i", "clip_t"):
        for k in ("A", "LA", "F", "BWT"):
            lo, hi = summary[score][f"{k}_ci"]
            assert lo <= hi and lo - 1e-9 <= summary[score][k] <= hi + 1e-9, (score, k)
    assert summary["attr_acc"]["F"] == pytest.approx(0.4)  # the point figures are unchanged
    for score in ("attr_acc", "clip_t"):
        lo, hi = summary["drift"][score]["drift_ci"]
        assert lo <= summary["drift"][score]["drift"] <= hi
    assert json.loads((tmp_path / "continual.json").read_text()) == json.loads(json.dumps(summary))
    lines = format_report(summary)
    assert re.fullmatch(r"attr_acc: A=0\.500 \[[-\d.]+, [-\d.]+\]  LA=.*", lines[0])
    assert re.search(r"attr_acc=\+0\.250 \[[-+]\d\.\d{3}, [-+]\d\.\d{3}\]", lines[-1])


def test_old_metrics_without_samples_have_null_intervals(tmp_path):
    summary = continual_report(BASE, STEPS, tmp_path)
    assert all(summary["attr_acc"][f"{k}_ci"] is None for k in ("A", "LA", "F", "BWT"))
    assert summary["drift"]["attr_acc"]["drift_ci"] is None


def test_report_lines_include_drift(tmp_path):
    lines = format_report(continual_report(BASE, STEPS, tmp_path))
    assert lines[0].startswith("attr_acc: A=0.500")
    assert lines[-1] == "relevant-concept drift (class prompts, base - final): attr_acc=+0.250  clip_t=+0.070"
