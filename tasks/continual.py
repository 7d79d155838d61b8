"""Prefect task: the continual-learning report of the whole sequence so far (R, A, F, BWT, LA,
relevant-concept drift, curves and heatmaps)."""
from __future__ import annotations

from pathlib import Path

from prefect import task

from lifelong_diffusion.continual import continual_report
from lifelong_diffusion.project import BASE, Project


@task(name="continual-summary")
def continual_summary(project_root: str) -> dict:
    """Reads the base's and every step's metrics.json in learning order; writes metrics/."""
    project = Project(Path(project_root))
    return continual_report(project.eval_metrics(BASE), [project.eval_metrics(n) for n in project.sequence()],
                            project.summary_file.parent)
