"""Live step runs (opened when training starts, loss logged as it trains, evaluation and model
attached at registration) and the version page, against a throwaway SQLite store."""
from __future__ import annotations

import json

from mlflow import MlflowClient

from tasks.tracking import LiveLoss, end_step_run, register_step, start_step_run
from tests.test_tracking import EXPERIMENT, MODEL, SEQUENCE, make_step, step_runs

TRACKING = {"experiment": EXPERIMENT, "sequence_id": SEQUENCE}


def train_live(root, steps: int = 60, fail: bool = False) -> str:
    snapshot_dir, _ = make_step(root, 1)
    snapshot = json.loads((snapshot_dir / "snapshot.json").read_text())
    run_id = start_step_run(snapshot, "inputs-1", **TRACKING)
    live = LiveLoss(run_id)
    for step in range(steps):
        live(step, 1.0 / (step + 1), 0.5 / (step + 1))
    live.flush()
    end_step_run(run_id, None if fail else snapshot["fingerprint"])
    return run_id


def register(root, **extra):
    return register_step(root / "adapters" / "striped-star", root / "eval" / "striped-star",
                         model_name=MODEL, **TRACKING, **extra)


def test_registration_attaches_to_the_live_run(sqlite_store):
    run_id = train_live(sqlite_store)
    client = MlflowClient()
    assert len(client.get_metric_history(run_id, "train_loss")) == 60  # logged while training
    record = register(sqlite_store)
    assert record["run_id"] == run_id and len(step_runs(client)) == 1
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["lifelong.registered"] == "true"
    assert "clip_i" in " ".join(run.data.metrics)
    assert len(client.get_metric_history(run_id, "train_loss")) == 60  # not logged twice
    assert register(sqlite_store)["version"] == record["version"]  # idempotent
    assert len(step_runs(client)) == 1


def test_a_killed_training_is_marked_failed_and_never_reused(sqlite_store):
    snapshot_dir, _ = make_step(sqlite_store, 1)
    snapshot = json.loads((snapshot_dir / "snapshot.json").read_text())
    killed = start_step_run(snapshot, "inputs-1", **TRACKING)  # left RUNNING, as by kill -9
    failed = train_live(sqlite_store, fail=True)  # the next attempt raised
    client = MlflowClient()
    assert client.get_run(killed).info.status == "FAILED"
    assert client.get_run(failed).info.status == "FAILED"
    record = register(sqlite_store)  # no finished run: one is created from train_log.json
    assert record["run_id"] not in (killed, failed)
    assert len(client.get_metric_history(record["run_id"], "train_loss")) == 20


def test_version_page_says_what_the_model_knows_and_how_good_it_is(sqlite_store):
    train_live(sqlite_store)
    so_far = {"clip_i": {"A": 0.5, "F": 0.0, "A_ci": [0.4, 0.6], "F_ci": None}}
    record = register(sqlite_store, so_far=so_far)
    client = MlflowClient()
    version = client.get_model_version(MODEL, record["version"])
    page = version.description
    for text in ("striped-star", "`<c1>`", "star", "a photo of <c1> star", "0.50",
                 "A = 0.500 [0.400, 0.600]", f"models:/{MODEL}@step-1", "pytorch_lora_weights"):
        assert text in page, text
    assert version.tags["tokens"] == "<c1>" and version.tags["clip_i.A"] == "0.500"
    assert version.tags["score.clip_i"] == "0.500"
    assert "<t>" not in client.get_registered_model(MODEL).description  # the UI would swallow it
