"""tasks.tracking against a throwaway SQLite store, and (slow) a real MLflow server."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from flows.servers import background_server, free_port
from lifelong_diffusion.snapshot import Snapshot, save_snapshot
from tasks.tracking import LATEST_ALIAS, register_step, registry_summary

CONCEPTS = [("striped-star", "star"), ("dotted-heart", "heart"), ("wavy-moon", "moon")]
# Step 3 exceeds MLflow's 1000-metrics-per-request limit, so batching is exercised.
LOSS_LENGTHS = {1: 20, 2: 35, 3: 1200}
MODEL = "lifelong-test"
EXPERIMENT = "lifelong-test"
SEQUENCE = "0123456789abcdef"


def make_step(root: Path, step: int, lr: float = 1e-4) -> tuple[Path, Path]:
    """Write the snapshot and eval folders a pipeline step would produce."""
    name = CONCEPTS[step - 1][0]
    snapshot_dir, eval_dir = root / "adapters" / name, root / "eval" / name
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    concepts = [
        {"name": n, "token": f"<c{i}>", "class_word": w}
        for i, (n, w) in enumerate(CONCEPTS[:step], start=1)
    ]
    # a real snapshot (its fingerprint is checked on load); the adapter's content follows lr
    losses = [1.0 / (i + 1) for i in range(LOSS_LENGTHS[step])]
    save_snapshot(Snapshot(step=step, name=name, method="naive", base_model="tiny-random",
                           concepts=concepts, lora=None,
                           config={"steps": 50, "lr": lr, "lora_rank": 4, "scheduler": "constant"},
                           adapter={"lora_A": torch.full((4, 8), lr)},
                           tokens={c["token"]: torch.zeros(8) for c in concepts}),
                  snapshot_dir, train_log={"loss": losses}, timing={"seconds": 1.5})
    per_concept = {c["name"]: {"clip_i": 0.5, "clip_t": 0.2} for c in concepts}
    metrics = {
        "step": step,
        "meaningful": False,
        "summary": {"clip_i": 0.51, "clip_t": 0.22},
        "per_concept": per_concept,
        "class_prompts": {c["class_word"]: {"clip_t": 0.2} for c in concepts},
    }
    (eval_dir / "metrics.json").write_text(json.dumps(metrics))
    Image.new("RGB", (16, 16), "red").save(eval_dir / "grid.png")
    return snapshot_dir, eval_dir


def register(root: Path, step: int, is_last: bool = False) -> dict:
    name = CONCEPTS[step - 1][0]
    return register_step(
        root / "adapters" / name,
        root / "eval" / name,
        model_name=MODEL,
        experiment=EXPERIMENT,
        sequence_id=SEQUENCE,
        sequence_tags={"lifelong.method": "naive"},
        is_last=is_last,
    )


def step_runs(client: MlflowClient) -> list:
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return client.search_runs([experiment_id], "tags.`lifelong.kind` = 'step'")


def test_register_sequence_is_idempotent_and_tracks_retraining(sqlite_store):
    root = sqlite_store / "work"
    for step in (1, 2, 3):
        make_step(root, step)
    results = [register(root, step, is_last=step == 3) for step in (1, 2, 3)]
    client = MlflowClient()

    assert [r["version"] for r in results] == ["1", "2", "3"]
    assert all(r["created"] for r in results)
    assert results[2]["aliases"] == ["step-3", LATEST_ALIAS]
    summary = registry_summary(MODEL)
    assert [(row["version"], row["step"], row["aliases"]) for row in summary] == [
        ("1", 1, ["step-1"]),
        ("2", 2, ["step-2"]),
        ("3", 3, [LATEST_ALIAS, "step-3"]),
    ]
    assert summary[1]["concepts"] == "striped-star,dotted-heart"
    version = client.get_model_version(MODEL, "2")
    snapshot = json.loads((root / "adapters" / "dotted-heart" / "snapshot.json").read_text())
    assert version.tags["fingerprint"] == snapshot["fingerprint"] == summary[1]["fingerprint"]
    assert (version.tags["method"], version.tags["base_model"]) == ("naive", "tiny-random")
    assert version.run_id == results[1]["run_id"] and version.source.startswith("models:/m-")

    parent_ids = {r["parent_run_id"] for r in results}
    assert len(parent_ids) == 1
    parent = client.get_run(parent_ids.pop())
    assert parent.info.run_name == "sequence-naive-01234567"
    assert parent.info.status == "FINISHED"
    runs = step_runs(client)
    assert len(runs) == 3
    for run in runs:
        step = int(run.data.tags["lifelong.step"])
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_name == f"step-{step}-{CONCEPTS[step - 1][0]}"
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == list(range(LOSS_LENGTHS[step]))
        assert run.data.metrics["per_concept.striped-star.clip_i"] == 0.5
        assert run.data.metrics["train_seconds"] == 1.5
        assert run.data.params["lr"] == "0.0001"
        assert run.data.params["class_word"] == CONCEPTS[step - 1][1]
        assert run.data.tags["lifelong.meaningful"] == "false"
        top = {f.path for f in client.list_artifacts(run.info.run_id)}
        assert {"grid.png", "snapshot", "eval"} <= top
        snapshot_files = {f.path for f in client.list_artifacts(run.info.run_id, "snapshot")}
        assert "snapshot/adapter.safetensors" in snapshot_files
    artifact_root = Path(runs[0].info.artifact_uri.removeprefix("file://"))
    assert artifact_root.is_relative_to(sqlite_store)
    assert (artifact_root / "grid.png").is_file()

    again = [register(root, step, is_last=step == 3) for step in (1, 2, 3)]
    assert not any(r["created"] for r in again)
    assert [r["run_id"] for r in again] == [r["run_id"] for r in results]
    assert len(registry_summary(MODEL)) == 3 and len(step_runs(client)) == 3

    make_step(root, 2, lr=3e-4)  # step 2 re-trained: new content, new fingerprint
    retrained = register(root, 2)
    assert retrained["created"] and retrained["version"] == "4"
    summary = registry_summary(MODEL)
    assert [(row["version"], row["aliases"]) for row in summary] == [
        ("1", ["step-1"]),
        ("2", []),
        ("3", [LATEST_ALIAS, "step-3"]),
        ("4", ["step-2"]),
    ]
    assert len(step_runs(client)) == 4


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` in its own process group, always torn down."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "server-artifacts"),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with background_server(cmd, f"{url}/health", env, tmp_path / "server.log", timeout=60):
        yield url


@pytest.mark.slow
def test_register_through_tracking_server(tmp_path, mlflow_server, use_tracking_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    use_tracking_uri(mlflow_server)
    root = tmp_path / "work"
    for step in (1, 2):
        make_step(root, step)
    results = [register(root, step, is_last=step == 2) for step in (1, 2)]
    assert [r["version"] for r in results] == ["1", "2"]
    assert not register(root, 2, is_last=True)["created"]

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    assert client.get_model_version_by_alias(MODEL, "step-1").version == "1"
    assert client.get_model_version_by_alias(MODEL, LATEST_ALIAS).version == "2"
    version = client.get_model_version(MODEL, "2")
    assert version.status == "READY"
    assert version.source.startswith("models:/m-")
    assert [row["aliases"] for row in registry_summary(MODEL)] == [
        ["step-1"],
        [LATEST_ALIAS, "step-2"],
    ]
    history = client.get_metric_history(results[1]["run_id"], "train_loss")
    assert len(history) == LOSS_LENGTHS[2]
    assert any((tmp_path / "server-artifacts").rglob("grid.png"))


def test_continual_report_goes_on_the_sequence_run(sqlite_store):
    from lifelong_diffusion.continual import continual_report
    from tasks.tracking import log_sequence_report

    root = sqlite_store / "work"
    make_step(root, 1)
    register(root, 1, is_last=True)
    base = {"step": 0, "per_concept": {},
            "class_prompts": {"star": {"clip_t": 0.3, "samples": {"clip_t": [0.3, 0.3]}}}}
    steps = [{"step": 1, "concept": "striped-star", "meaningful": True,
              "per_concept": {"striped-star": {"clip_i": 0.8, "clip_t": 0.25,
                                               "samples": {"clip_i": [0.7, 0.9], "clip_t": [0.25, 0.25]}}},
              "class_prompts": {"star": {"clip_t": 0.2, "samples": {"clip_t": [0.2, 0.2]}}}}]
    summary = continual_report(base, steps, root / "metrics")
    parent_id = log_sequence_report(root / "metrics", summary, experiment=EXPERIMENT,
                                    sequence_id=SEQUENCE, method="naive")
    client = MlflowClient()
    parent = client.get_run(parent_id)
    assert parent.data.tags["lifelong.kind"] == "sequence"
    assert parent.data.metrics["clip_i.A"] == pytest.approx(0.8)
    # the interval's ends beside each figure (two seeds: the resampled means lie in [0.7, 0.9])
    lo, hi = parent.data.metrics["clip_i.A_lo"], parent.data.metrics["clip_i.A_hi"]
    assert [lo, hi] == pytest.approx(summary["clip_i"]["A_ci"]) and 0.7 <= lo < 0.8 < hi <= 0.9
    assert parent.data.metrics["drift.clip_t"] == pytest.approx(0.1)
    drift = [parent.data.metrics[f"drift.clip_t_{end}"] for end in ("lo", "hi")]
    assert drift == pytest.approx([0.1, 0.1])  # every seed drifts by 0.1
    assert "clip_i.F" not in parent.data.metrics  # undefined after one step, not logged as 0
    assert "clip_i.F_lo" not in parent.data.metrics
    logged = {f.path for f in client.list_artifacts(parent_id, "continual")}
    assert logged == {"continual/continual.json", "continual/curves.csv", "continual/R_heatmap.png",
                      "continual/curves.png"}
    # the step run is a child of the same parent
    (run,) = step_runs(client)
    assert run.data.tags["mlflow.parentRunId"] == parent_id
