"""Replay-free: step t reads only concept t's images and S_{t-1}. Deleting every earlier
concept's photos and processed copies before step t changes nothing in S_t."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from prefect.logging import disable_run_logger

from tasks.base import prepare_base
from tasks.ingest import ingest
from tasks.train import train_step

REPO = Path(__file__).resolve().parents[1]
FIRST, SECOND = "striped-star", "dotted-heart"


def project_with_two_concepts(root: Path, method: str = "naive") -> Path:
    root.mkdir()
    for name in (FIRST, SECOND):
        shutil.copytree(REPO / "data" / "concepts" / name, root / "data" / "concepts" / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(steps=3, method=method)
    kd = {"samples_per_prompt": 1, "sampler_steps": 2}
    params["train"]["method_params"] = {"lfs_kd": kd, "lfs": kd}
    params["sequence"] = {FIRST: {"prev": "base"}, SECOND: {"prev": FIRST}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def fingerprint(root: Path, name: str) -> str:
    return json.loads((root / "adapters" / name / "snapshot.json").read_text())["fingerprint"]


@pytest.mark.parametrize("method", ["naive", "merge", "clora", "lfs_kd", "lfs", "ewc", "ewc_dc", "dsc"])
def test_step_two_is_identical_without_the_first_concepts_data(tmp_path, method):
    """lfs_kd and lfs distil on the teacher's own samples of the first concept, never its photos;
    lfs carries earlier context banks inside the snapshot and never reads an earlier photo;
    merge and clora carry earlier concepts only as the folded updates in the snapshot;
    ewc and ewc_dc take their Fisher from the current concept and keep only it, dsc
    re-noises the current concept's latents under earlier concepts' prompts."""
    root = str(project_with_two_concepts(tmp_path / "p", method))
    with disable_run_logger():  # the tasks' own functions, without a Prefect server
        prepare_base.fn(root)
        for name in (FIRST, SECOND):
            ingest.fn(root, name)
            train_step.fn(root, name)
        with_old_data = fingerprint(Path(root), SECOND)

        for folder in ("data/concepts", "data/processed"):
            shutil.rmtree(Path(root) / folder / FIRST)
        shutil.rmtree(Path(root) / "adapters" / SECOND)
        ingest.fn(root, SECOND)
        train_step.fn(root, SECOND)

    assert fingerprint(Path(root), SECOND) == with_old_data
