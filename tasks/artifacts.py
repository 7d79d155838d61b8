"""Prefect artifacts a person reads in the UI: a progress bar per training step, a summary
per registered step (its scores, A and F so far, where its MLflow run and grid are), and the
continual report at the end of the sequence."""
from __future__ import annotations

from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from lifelong_diffusion.cl_metrics import format_report

from .throttle import Throttle


def artifact_key(*parts: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    return "-".join(parts).lower().replace("_", "-")


class TrainingProgress:
    """on_step callback: a progress artifact that fills as the step trains, chained before
    another callback (the MLflow live loss)."""

    def __init__(self, name: str, total_steps: int, then=None):
        self.total, self.then, self.throttle = max(total_steps, 1), then, Throttle()
        self.artifact_id = create_progress_artifact(
            0.0, key=artifact_key("train", name),
            description=f"Training {name}: {total_steps} optimizer steps")

    def __call__(self, step: int, loss: float, denoise: float) -> None:
        if self.then:
            self.then(step, loss, denoise)
        done = step + 1
        if done == self.total or self.throttle.due():
            update_progress_artifact(self.artifact_id, 100.0 * done / self.total)


def mlflow_run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"[MLflow run]({tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"
    return (f"MLflow run `{run_id}` (experiment {experiment_id}): "
            f"`mlflow ui --backend-store-uri {tracking_uri}`")


def publish_step(name: str, step: int, page_markdown: str, registered: dict, grid: Path,
                 tracking_uri: str) -> None:
    link = mlflow_run_link(tracking_uri, registered["experiment_id"], registered["run_id"])
    aliases = ", ".join(f"`{a}`" for a in registered["aliases"])
    header = (f"# Step {step}: {name}\n\nRegistered as **{registered['model_name']}** version "
              f"{registered['version']} ({aliases}). {link}; samples of every concept after "
              f"this step: `{grid}` (also `grid.png` on the run).")
    create_markdown_artifact(f"{header}\n\n{page_markdown}", key=artifact_key("step", str(step), name),
                             description=f"Step {step} ({name}): what the model knows and how well")


def publish_report(summary: dict, report_dir: Path) -> None:
    body = "\n".join(format_report(summary))
    create_markdown_artifact(
        f"# The sequence\n\n95% bootstrap intervals over the evaluation seeds.\n\n```\n{body}\n```\n\n"
        f"R heatmaps and curves: `{report_dir / 'R_heatmap.png'}`, `{report_dir / 'curves.png'}`.",
        key="continual-report", description="A, F, BWT, LA and drift of the whole sequence")
