"""The continual-learning report of a sequence: figures (continual.json), per-concept curves
(curves.csv, for DVC's data-series plots) and pictures (R heatmaps, curves)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from .cl_metrics import SCORES, curve_rows, sequence_figures
from .plots import curves, r_heatmaps

SUMMARY, CURVES, HEATMAP, CURVE_PLOT = "continual.json", "curves.csv", "R_heatmap.png", "curves.png"


def continual_report(base_metrics: dict, step_metrics: list[dict], out_dir: Path) -> dict:
    """Summaries of R per score plus relevant-concept drift, each figure with its 95% bootstrap
    interval over seeds (`A_ci`, ..., `drift_ci`: [lo, hi], null for metrics.json without
    per-seed values); writes the four files into out_dir."""
    summary = {"steps": len(step_metrics), "meaningful": all(m["meaningful"] for m in step_metrics),
               **sequence_figures(base_metrics, step_metrics)}
    keys = [k for k in SCORES if k in summary]
    matrices = {key: (summary[key]["concepts"], summary[key]["R"]) for key in keys}
    rows = curve_rows(base_metrics, step_metrics, list(SCORES))  # fixed columns; blank if unscored
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    with open(out_dir / CURVES, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["after_step", "prompt", *SCORES])
        writer.writeheader()
        writer.writerows(rows)
    r_heatmaps(matrices, summary, out_dir / HEATMAP)
    curves(rows, keys, out_dir / CURVE_PLOT)
    return summary
