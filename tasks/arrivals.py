"""Prefect task: take in new concepts (a path from the run form, the inbox) before a run."""
from __future__ import annotations

import shutil
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from lifelong_diffusion.arrivals import INBOX, REJECTED, InboxOutcome, add_concept, reject, take_inbox
from lifelong_diffusion.ingest import ConceptDataError
from lifelong_diffusion.project import ParamsError, Project


@task(name="take-arrivals")
def take_arrivals(project_root: str, new_concept: str = "", scan_inbox: bool = True) -> dict:
    """{"added": [names], "rejected": {folder: reason}}; a bad `new_concept` is copied (the
    user's folder stays where it is) to the inbox's rejected/ and fails the run."""
    project = Project(Path(project_root))
    outcome = take_inbox(project) if scan_inbox else InboxOutcome()
    added, rejected = outcome.added, outcome.rejected
    if new_concept:
        source = Path(new_concept).expanduser()
        try:
            added.append(add_concept(project, source))
        except (ConceptDataError, ParamsError) as exc:
            rejected[source.name] = str(exc)
            if source.is_dir():
                copy = project.root / INBOX / f".{source.name}.rejected-copy"
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(source, copy)
                reject(copy, project.root / INBOX / REJECTED, str(exc), name=source.name)
            report(added, rejected)
            raise
    if added or rejected:
        report(added, rejected)
        get_run_logger().info("new concepts: %s; rejected: %s", added or "none", list(rejected) or "none")
    return {"added": added, "rejected": rejected}


def report(added: list[str], rejected: dict[str, str]) -> None:
    lines = ["# New concepts", ""]
    lines += [f"- added **{name}** to the end of the sequence" for name in added]
    lines += [f"- rejected **{name}** (moved to `{INBOX / REJECTED / name}/`, see its "
              f"`error.txt`):\n\n  ```\n  {reason}\n  ```" for name, reason in rejected.items()]
    create_markdown_artifact("\n".join(lines), key="new-concepts",
                             description="Concepts taken in before this run")
