"""Prefect task: the continual-learning summary of the whole sequence so far (R, A, F, BWT, LA)."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from lifelong_diffusion.cl_metrics import score_matrix, summarize
from lifelong_diffusion.project import Project

SCORES = ("attr_acc", "clip_i", "clip_t")  # attr_acc only where an attribute classifier scored


@task(name="continual-summary")
def continual_summary(project_root: str) -> dict:
    """Reads every step's metrics.json in learning order; writes metrics/continual.json."""
    project = Project(Path(project_root))
    steps = [json.loads((project.eval_dir(n) / "metrics.json").read_text())
             for n in project.sequence()]
    summary = {"steps": len(steps), "meaningful": all(m["meaningful"] for m in steps)}
    for key in (k for k in SCORES if all(k in v for m in steps for v in m["per_concept"].values())):
        names, R = score_matrix(steps, key)
        summary[key] = {**summarize(R), "concepts": names, "R": R}
    project.summary_file.parent.mkdir(exist_ok=True)
    project.summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
