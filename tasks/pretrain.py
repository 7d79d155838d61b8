"""Prefect task: pretrain the world preset (base pipeline + evaluators) into models/world."""
from __future__ import annotations

from pathlib import Path

from prefect import task

from lifelong_diffusion.project import Project
from lifelong_diffusion.world.build import WorldBuildConfig, build_world_models


@task(name="pretrain-world")
def pretrain_world(project_root: str) -> dict:
    project = Project(Path(project_root))
    cfg = WorldBuildConfig.from_params(project.section("pretrain"))
    return build_world_models(cfg, project.root / "models" / "world")
