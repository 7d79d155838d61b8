"""The DAG: base -> ingest every concept -> evaluate the base on their class prompts -> for
each concept in order: train step -> evaluate -> register; then the continual-learning
summary of the whole sequence.

`lifelong_sequence` runs the whole sequence as one Prefect flow (what the Prefect UI
schedules). Steps whose outputs were computed from the same inputs are skipped, so a crashed
sequence is resumed by running it again. DVC's stages run the single-stage flows of
flows/stages.py instead.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from prefect import flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger, Event, get_events_client

from lifelong_diffusion.cl_metrics import format_report
from lifelong_diffusion.project import BASE, Project
from tasks.arrivals import take_arrivals
from tasks.base import prepare_base
from tasks.continual import continual_summary
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.register import log_report, register
from tasks.train import train_step


ARRIVAL_EVENT = "concept.arrived"  # payload: {"path": a concept folder}


@flow(name="lifelong-sequence", log_prints=True)
def lifelong_sequence(project_root: str = ".", force: bool = False, new_concept: str = "",
                      scan_inbox: bool = True) -> list[dict]:
    """Learn every concept of params.yaml's sequence in order; returns one record per step.

    Args:
        project_root: the project folder (its params.yaml, data/, adapters/).
        force: re-run every step even when its stored outputs are up to date.
        new_concept: path of a concept folder (concept.yaml and 3-10 photos) to add to the
            end of the sequence before the run; empty for none. A bad one is copied to
            data/inbox/rejected/<name>/ with an error.txt and the run fails.
        scan_inbox: first add every concept folder waiting in data/inbox/ (bad ones move to
            data/inbox/rejected/<name>/ with an error.txt).
    """
    root = str(Path(project_root).resolve())
    project = Project(Path(root))
    with project.lock():
        take_arrivals(root, new_concept, scan_inbox)
        return run_sequence(root, force)


def run_sequence(root: str, force: bool) -> list[dict]:
    order = Project(Path(root)).sequence()
    prepare_base(root, force=force)
    for name in order:
        ingest(root, name)
    evaluate(root, BASE, force=force)  # class prompts before any step: the drift reference
    records = []
    for i, name in enumerate(order):
        train_step(root, name, force=force)
        metrics = evaluate(root, name, force=force)
        registered = register(root, name, is_last=i == len(order) - 1)
        records.append({"concept": name, "summary": metrics["summary"],
                        "version": registered["version"]})
        print(f"step {i + 1}/{len(order)} {name}: {metrics['summary']} -> "
              f"model version {registered['version']}")
    print("\n".join(format_report(continual_summary(root))))
    log_report(root)
    return records


def sequence_deployment(project_root: str = ".", cron: str | None = None):
    """The sequence flow as a deployment for this project: the Prefect UI can start it on
    demand (its form takes a new concept's path), and with `cron` the server's scheduler
    starts it on that schedule (e.g. nightly, picking up concepts dropped into data/inbox/).
    A `concept.arrived` event for the project starts it with the event's path (an automation
    the deployment owns). One run per project at a time: a run started while another runs
    waits for it."""
    root = str(Path(project_root).resolve())
    arrived = DeploymentEventTrigger(
        name=f"{ARRIVAL_EVENT} in {root}", expect={ARRIVAL_EVENT},
        match={"prefect.resource.id": arrival_resource(root)},
        parameters={"project_root": root, "new_concept": "{{ event.payload.path }}"})
    return lifelong_sequence.to_deployment(
        name=f"lifelong-{Path(root).name}", cron=cron, parameters={"project_root": root},
        description=f"Lifelong personalization sequence of {root}; new concepts: the "
                    f"`new_concept` parameter, folders in data/inbox/ or a `{ARRIVAL_EVENT}` "
                    "event (`lifelong announce PATH`)",
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        triggers=[arrived],
    )


def arrival_resource(project_root: str) -> str:
    """The resource a project's `concept.arrived` events name: only its deployment reacts."""
    return f"lifelong.project.{Path(project_root).resolve()}"


def announce_concept(project_root: str, path: str) -> None:
    """Send `concept.arrived` for the concept folder `path` to the Prefect server at
    PREFECT_API_URL, and wait until it has the event (a fire-and-forget `emit_event` from a
    short-lived process can be lost at exit)."""
    event = Event(event=ARRIVAL_EVENT, resource={"prefect.resource.id": arrival_resource(project_root)},
                  payload={"path": str(Path(path).resolve())})

    async def send() -> None:
        async with get_events_client() as client:
            await client.emit(event)

    asyncio.run(send())
