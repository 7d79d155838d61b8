"""Prefect task: one lifelong step, S_{t-1} + concept t -> S_t."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

from lifelong_diffusion.project import Project
from lifelong_diffusion.stamps import stored_key
from lifelong_diffusion.train import train_concept, train_inputs_key


@task(name="train-step")
def train_step(project_root: str, name: str, force: bool = True) -> str:
    """With force=False an existing snapshot trained from the same inputs is kept (resume)."""
    project = Project(Path(project_root))
    prev_dir = project.snapshot_dir(project.previous(name))
    out, data, cfg = project.snapshot_dir(name), project.processed_dir(name), project.train_config()
    if not force and stored_key(out / "snapshot.json") == train_inputs_key(prev_dir, data, cfg):
        get_run_logger().info("%s is up to date, skipping training", out)
        return str(out)
    fingerprint = train_concept(prev_dir, data, out, cfg)
    get_run_logger().info("wrote %s (fingerprint %s)", out, fingerprint[:12])
    return str(out)
