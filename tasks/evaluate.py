"""Prefect task: evaluate S_t on every concept seen so far; a table artifact shows the scores."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from lifelong_diffusion.cl_metrics import SAMPLES
from lifelong_diffusion.evaluate import eval_inputs_key, evaluate_snapshot
from lifelong_diffusion.project import BASE, Project
from lifelong_diffusion.stamps import stored_key


def table_row(prompt: str, scores: dict) -> dict:
    """The scores (means) of one prompt; the per-seed values stay in metrics.json."""
    return {"concept": prompt, **{k: v for k, v in scores.items() if k != SAMPLES}}


@task(name="evaluate")
def evaluate(project_root: str, name: str, force: bool = True) -> dict:
    """`name` is a concept of the sequence, or `base`: S_0 on the class prompts of the whole
    sequence, the reference of relevant-concept drift."""
    project = Project(Path(project_root))
    snapshot, out, cfg = project.snapshot_dir(name), project.eval_dir(name), project.eval_config()
    class_words = project.class_words() if name == BASE else []
    metrics_file = out / "metrics.json"
    if not force and stored_key(metrics_file) == eval_inputs_key(snapshot, cfg, class_words):
        get_run_logger().info("%s is up to date, skipping evaluation", out)
        return json.loads(metrics_file.read_text())
    metrics = evaluate_snapshot(snapshot, project.processed_dir(), out, cfg, class_words)
    rows = [table_row(c, scores) for c, scores in metrics["per_concept"].items()]
    rows += [table_row(f"class: {word}", scores) for word, scores in metrics["class_prompts"].items()]
    create_table_artifact(key=f"eval-{name}".lower().replace("_", "-"), table=rows,
                          description=f"Step {metrics['step']} ({name}): scores of every concept so far")
    return metrics
