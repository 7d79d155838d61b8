"""Prefect task: check the base model and write S_0, the empty snapshot every sequence starts from."""
from __future__ import annotations

from pathlib import Path

from prefect import task

from lifelong_diffusion.base_model import resolve_base_model
from lifelong_diffusion.project import BASE, Project
from lifelong_diffusion.snapshot import empty_snapshot, save_snapshot
from lifelong_diffusion.stamps import inputs_key, stored_key


@task(name="prepare-base")
def prepare_base(project_root: str, force: bool = True) -> str:
    project = Project(Path(project_root))
    base = project.section("base")
    out = project.snapshot_dir(BASE)
    key = inputs_key(base)
    if force or stored_key(out / "snapshot.json") != key:
        resolve_base_model(base["model"], base.get("allow_download", False))  # fail early
        save_snapshot(empty_snapshot(base["model"]), out, inputs=key)
    return str(out)
