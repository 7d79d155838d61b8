"""Prefect task: log a finished step to MLflow and register it as a model version."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from lifelong_diffusion.project import Project
from lifelong_diffusion.stamps import inputs_key

from .tracking import default_tracking_uri, register_step


def model_name_for(project: Project, method: str) -> str:
    """`register.model_name` may contain {method}: one registered model per method keeps
    each method's versions a clean step-by-step history."""
    return project.section("register").get("model_name", "lifelong-{method}").format(method=method)


@task(name="register")
def register(project_root: str, name: str, is_last: bool) -> dict:
    project = Project(Path(project_root))
    snapshot = json.loads((project.snapshot_dir(name) / "snapshot.json").read_text())
    experiment = project.section("register").get("experiment", "lifelong-diffusion")
    return register_step(
        project.snapshot_dir(name), project.eval_dir(name),
        model_name=model_name_for(project, snapshot["method"]), experiment=experiment,
        sequence_id=inputs_key(experiment, snapshot["base_model"], snapshot["method"]),
        sequence_tags={"base_model": snapshot["base_model"], "method": snapshot["method"]},
        is_last=is_last, tracking_uri=default_tracking_uri(project.root),
    )
