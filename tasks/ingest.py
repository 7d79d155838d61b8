"""Prefect task: validate and normalize one concept folder into data/processed/<name>."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from lifelong_diffusion.ingest import read_concept_yaml
from lifelong_diffusion.ingest import ingest_concept as ingest_folder
from lifelong_diffusion.project import Project


def taken_tokens(project: Project, name: str) -> dict[str, str]:
    """Tokens of the other concepts of the sequence. Their raw photos may be gone (privacy),
    so a processed manifest is read first and concept.yaml only as a fallback."""
    taken = {}
    for other in (n for n in project.sequence() if n != name):
        manifest = project.processed_dir(other) / "manifest.json"
        raw = project.concept_dir(other) / "concept.yaml"
        if manifest.exists():
            taken[json.loads(manifest.read_text())["token"]] = other
        elif raw.exists():
            taken[read_concept_yaml(raw)["token"]] = other
    return taken


@task(name="ingest")
def ingest(project_root: str, name: str) -> str:
    project = Project(Path(project_root))
    settings = project.section("ingest")
    ingest_folder(project.concept_dir(name), project.processed_dir(name),
                  taken_tokens=taken_tokens(project, name), **settings)
    return str(project.processed_dir(name))
