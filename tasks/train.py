"""Prefect task: one lifelong step, S_{t-1} + concept t -> S_t, tracked live in MLflow."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

from lifelong_diffusion.project import Project
from lifelong_diffusion.stamps import stored_key
from lifelong_diffusion.train import train_concept, train_inputs_key

from .artifacts import TrainingProgress
from .register import sequence_run
from .tracking import LiveLoss, end_step_run, start_step_run


def step_in_training(project: Project, name: str, prev_dir: Path, cfg) -> dict:
    """What snapshot.json of the step being trained will say (for its MLflow run)."""
    prev = json.loads((prev_dir / "snapshot.json").read_text())
    manifest = json.loads((project.processed_dir(name) / "manifest.json").read_text())
    entry = {k: manifest[k] for k in ("name", "token", "class_word")}
    return {"step": prev["step"] + 1, "name": name, "method": cfg.method,
            "base_model": prev["base_model"], "concepts": prev["concepts"] + [entry],
            "config": cfg.flat()}


@task(name="train-step")
def train_step(project_root: str, name: str, force: bool = True) -> str:
    """With force=False an existing snapshot trained from the same inputs is kept (resume).
    The step's MLflow run opens now and shows the loss as it trains; registration later
    attaches the evaluation and the model to the same run."""
    project = Project(Path(project_root))
    prev_dir = project.snapshot_dir(project.previous(name))
    out, data, cfg = project.snapshot_dir(name), project.processed_dir(name), project.train_config()
    inputs = train_inputs_key(prev_dir, data, cfg)
    if not force and stored_key(out / "snapshot.json") == inputs:
        get_run_logger().info("%s is up to date, skipping training", out)
        return str(out)
    pending = step_in_training(project, name, prev_dir, cfg)
    tracking = sequence_run(project, pending)
    run_id = start_step_run(pending, inputs, **tracking)
    live, fingerprint = LiveLoss(run_id, tracking["tracking_uri"]), None
    try:
        fingerprint = train_concept(prev_dir, data, out, cfg,
                                    on_step=TrainingProgress(name, cfg.steps, then=live))
        live.flush()
    finally:
        end_step_run(run_id, fingerprint, tracking["tracking_uri"])
    get_run_logger().info("wrote %s (fingerprint %s), MLflow run %s", out, fingerprint[:12], run_id)
    return str(out)
