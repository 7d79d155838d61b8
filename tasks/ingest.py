"""Prefect task: validate and normalize one concept folder into data/processed/<name>."""
from __future__ import annotations

from pathlib import Path

from prefect import task

from lifelong_diffusion.ingest import ingest_concept as ingest_folder
from lifelong_diffusion.project import Project


@task(name="ingest")
def ingest(project_root: str, name: str) -> str:
    project = Project(Path(project_root))
    settings = project.section("ingest")
    ingest_folder(project.concept_dir(name), project.processed_dir(name),
                  taken_tokens=project.taken_tokens(name), **settings)
    return str(project.processed_dir(name))
