"""Prefect task: log a finished step to MLflow and register it as a model version."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from lifelong_diffusion.cl_metrics import sequence_figures
from lifelong_diffusion.project import BASE, Project
from lifelong_diffusion.stamps import inputs_key

from .artifacts import publish_report, publish_step
from .store import default_tracking_uri
from .tracking import log_sequence_report, missing_versions, register_step


def model_name_for(project: Project, method: str) -> str:
    """`register.model_name` may contain {method}: one registered model per method keeps
    each method's versions a clean step-by-step history."""
    return project.section("register").get("model_name", "lifelong-{method}").format(method=method)


def sequence_run(project: Project, snapshot: dict) -> dict:
    """Which MLflow parent run a snapshot's sequence logs to: one per experiment, base
    model and method."""
    experiment = project.section("register").get("experiment", "lifelong-diffusion")
    return {"experiment": experiment,
            "sequence_id": inputs_key(experiment, snapshot["base_model"], snapshot["method"]),
            "sequence_tags": {"base_model": snapshot["base_model"], "method": snapshot["method"]},
            "tracking_uri": default_tracking_uri(project.root)}


def _snapshot(project: Project, name: str) -> dict:
    return json.loads((project.snapshot_dir(name) / "snapshot.json").read_text())


def figures_so_far(project: Project, name: str) -> dict | None:
    """A, F, ... of the sequence up to and including `name`, for its version's page; None
    until the base and every earlier step are evaluated."""
    order = project.sequence()
    names = [BASE, *order[: order.index(name) + 1]]
    if not all((project.eval_dir(n) / "metrics.json").exists() for n in names):
        return None
    base, *steps = (project.eval_metrics(n) for n in names)
    return sequence_figures(base, steps)


@task(name="register")
def register(project_root: str, name: str, is_last: bool) -> dict:
    project = Project(Path(project_root))
    snapshot = _snapshot(project, name)
    tracking = sequence_run(project, snapshot)
    registered = register_step(project.snapshot_dir(name), project.eval_dir(name),
                               model_name=model_name_for(project, snapshot["method"]), is_last=is_last,
                               so_far=figures_so_far(project, name), **tracking)
    publish_step(name, snapshot["step"], registered["description"], registered,
                 project.eval_dir(name) / "grid.png", tracking["tracking_uri"])
    return registered


@task(name="log-continual-report")
def log_report(project_root: str) -> str:
    """The continual report (metrics/) on the sequence's MLflow parent run."""
    project = Project(Path(project_root))
    summary = json.loads(project.summary_file.read_text())
    snapshot = _snapshot(project, project.sequence()[-1])
    publish_report(summary, project.summary_file.parent)
    return log_sequence_report(project.summary_file.parent, summary, method=snapshot["method"],
                               **sequence_run(project, snapshot))


def forget_lost_registry(project: Project) -> list[dict]:
    """If the tracking store lost versions that registry.json names (mlflow.db deleted, a new
    tracking server), delete registry.json so that the register stage runs again and
    re-registers every stored step; returns the lost entries."""
    path = project.registry_file
    if not path.exists():
        return []
    try:
        recorded = json.loads(path.read_text())
    except ValueError:
        recorded = None
    if not isinstance(recorded, list):  # damaged: re-registering rewrites it
        path.unlink()
        return [{"file": str(path)}]
    lost = missing_versions(recorded, default_tracking_uri(project.root))
    if lost:
        path.unlink()
    return lost
