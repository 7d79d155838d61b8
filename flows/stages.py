"""One flow per DVC stage; `lifelong <stage>` runs them. DVC has already decided the stage
must run, so nothing is skipped here.

Each flow imports its task inside the function: every DVC stage is a fresh process, and
importing torch + diffusers + open_clip costs ~10 s that ingest and register do not need.
"""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from lifelong_diffusion.project import Project


def _root(project_root: str) -> str:
    return str(Path(project_root).resolve())


@flow(name="pretrain-world")
def pretrain_flow(project_root: str = ".") -> dict:
    """About an hour on 2 cores; the result ships in the repository, so users rarely run it."""
    from tasks.pretrain import pretrain_world

    return pretrain_world(_root(project_root))


@flow(name="base")
def base_flow(project_root: str = ".") -> str:
    from tasks.base import prepare_base

    return prepare_base(_root(project_root))


@flow(name="ingest")
def ingest_flow(name: str, project_root: str = ".") -> str:
    from tasks.ingest import ingest

    return ingest(_root(project_root), name)


@flow(name="train-step")
def train_flow(name: str, project_root: str = ".") -> str:
    from tasks.train import train_step

    return train_step(_root(project_root), name)


@flow(name="evaluate")
def evaluate_flow(name: str, project_root: str = ".") -> dict:
    from tasks.evaluate import evaluate

    return evaluate(_root(project_root), name)


@flow(name="continual-summary")
def continual_flow(project_root: str = ".") -> dict:
    from tasks.continual import continual_summary

    return continual_summary(_root(project_root))


@flow(name="register")
def register_flow(project_root: str = ".") -> list[dict]:
    """Register every step of the sequence in order (idempotent: known steps are reused), put
    the continual report on the sequence's run, and write registry.json, the stage's output
    that records which version holds which step."""
    from lifelong_diffusion.stamps import fingerprint_of
    from tasks.register import log_report, register
    from tasks.store import check_tracking_server, default_tracking_uri

    root = Path(_root(project_root))
    project = Project(root)
    check_tracking_server(default_tracking_uri(root))  # seconds, not minutes of retries
    order = project.sequence()
    records = [register(str(root), name, is_last=i == len(order) - 1)
               for i, name in enumerate(order)]
    log_report(str(root))
    summary = [{"concept": n, "model_name": r["model_name"], "version": r["version"],
                "aliases": r["aliases"], "fingerprint": fingerprint_of(project.snapshot_dir(n))}
               for n, r in zip(order, records)]
    project.registry_file.write_text(json.dumps(summary, indent=2) + "\n")
    return records
