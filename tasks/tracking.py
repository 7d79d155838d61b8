"""MLflow bookkeeping for lifelong sequences.

A sequence is one parent run; each step is a nested run plus one registered model
version, so every intermediate model of the sequence stays addressable (``step-<t>``
aliases) and comparable. Everything is keyed by the snapshot fingerprint so that
re-running a pipeline never duplicates runs or versions.

Only ``MlflowClient`` with explicit run ids is used: these functions run inside
long-lived Prefect workers, where the fluent active-run stack would leak between tasks.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.entities.model_registry.model_version_status import ModelVersionStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from lifelong_diffusion.cl_metrics import SCORES
from lifelong_diffusion.snapshot import read_timing

from .mlflow_model import log_snapshot_model
from .store import TrackingUnavailable
from .throttle import Throttle
from .version_page import MODEL_DESCRIPTION, VersionPage, version_page

KIND = "lifelong.kind"
SEQUENCE_ID = "lifelong.sequence_id"
STEP = "lifelong.step"
CONCEPT = "lifelong.concept"
FINGERPRINT = "lifelong.fingerprint"
INPUTS = "lifelong.inputs"  # the training inputs key: what a live run is training
ATTACHED = "lifelong.registered"  # evaluation and model logged on the step run
MODEL_URI, MODEL_ID = "lifelong.model_uri", "lifelong.model_id"  # the step's logged MLflow model
MEANINGFUL = "lifelong.meaningful"
PARENT_RUN_ID = "mlflow.parentRunId"
# MLflow reserves "latest" (mlflow/utils/validation.py), hence the suffix.
LATEST_ALIAS = "latest-step"
READY_TIMEOUT_S = 300.0
_PENDING = ModelVersionStatus.to_string(ModelVersionStatus.PENDING_REGISTRATION)
_READY = ModelVersionStatus.to_string(ModelVersionStatus.READY)


def register_step(
    snapshot_dir: Path,
    eval_dir: Path,
    *,
    model_name: str,
    experiment: str,
    sequence_id: str,
    sequence_tags: dict[str, str] | None = None,
    is_last: bool = False,
    so_far: dict | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Attach a finished step's evaluation and model to its run (the live training run, or
    one created now) and register it as a model version whose page says what it knows
    (`so_far`: the continual figures of the sequence up to this step).

    Idempotent: a step already logged with the same fingerprint is reused, not re-logged.
    """
    snapshot_dir, eval_dir = Path(snapshot_dir), Path(eval_dir)
    snapshot = _read_json(snapshot_dir / "snapshot.json")
    page = version_page(snapshot, _read_json(eval_dir / "metrics.json"), so_far, model_name)
    client = _client(tracking_uri)
    experiment_id = _ensure_experiment(client, experiment)
    parent_id = _ensure_parent_run(
        client, experiment_id, sequence_id, snapshot["method"], sequence_tags or {}
    )
    run_id, attached = _find_step_run(client, experiment_id, sequence_id, snapshot)
    run_created = run_id is None
    if run_created:  # trained without tracking (or restored from DVC's cache): log it now
        run_id = _create_step_run(client, experiment_id, parent_id, sequence_id, snapshot)
        _log_training_curve(client, run_id, snapshot_dir)
    if not attached:
        _attach_step(client, run_id, snapshot, snapshot_dir, eval_dir, page)
    version, version_created = _ensure_version(client, model_name, run_id, snapshot, page)
    aliases = [f"step-{snapshot['step']}"]
    client.set_registered_model_alias(model_name, aliases[0], version)
    if is_last:
        set_latest_step_alias(model_name, version, tracking_uri)
        aliases.append(LATEST_ALIAS)
        client.set_terminated(parent_id, "FINISHED")
    return {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "description": page.description,
        "parent_run_id": parent_id,
        "model_name": model_name,
        "version": version,
        "aliases": aliases,
        "created": run_created or version_created,
    }


def log_sequence_report(
    report_dir: Path,
    summary: dict,
    *,
    experiment: str,
    sequence_id: str,
    method: str,
    sequence_tags: dict[str, str] | None = None,
    tracking_uri: str | None = None,
) -> str:
    """The continual report on the sequence's parent run: A, F, BWT, LA and drift of every
    score as metrics at the sequence length, each with its 95% interval as `<name>_lo` and
    `<name>_hi` where continual.json has one, the files of `report_dir` (R heatmap, curves,
    continual.json) as artifacts under continual/. Logging again replaces the artifacts."""
    client = _client(tracking_uri)
    experiment_id = _ensure_experiment(client, experiment)
    parent_id = _ensure_parent_run(client, experiment_id, sequence_id, method, sequence_tags or {})
    now, steps = int(time.time() * 1000), int(summary["steps"])
    figures = [(f"{score}.{key}", summary[score][key], summary[score].get(f"{key}_ci"))
               for score in SCORES if score in summary for key in ("A", "F", "BWT", "LA")]
    figures += [(f"drift.{score}", d["drift"], d.get("drift_ci"))
                for score, d in (summary.get("drift") or {}).items()]
    metrics = [Metric(name, float(value), now, steps)
               for name, value in _with_interval(figures) if value is not None]
    client.log_batch(parent_id, metrics=metrics)
    client.log_artifacts(parent_id, str(report_dir), "continual")
    return parent_id


def set_latest_step_alias(model_name: str, version: str | int,
                          tracking_uri: str | None = None) -> None:
    """Point ``latest-step`` at a version; separate so a caller that learns the sequence
    end only afterwards can still mark it."""
    _client(tracking_uri).set_registered_model_alias(model_name, LATEST_ALIAS, str(version))


def registry_summary(model_name: str, tracking_uri: str | None = None) -> list[dict]:
    """One row per model version, for the CLI and tests. Aliases come from the
    registered model because version search results may omit them."""
    client = _client(tracking_uri)
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(model_name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = [
        {
            "version": str(mv.version),
            "step": int(mv.tags["step"]) if "step" in mv.tags else None,
            "concepts": mv.tags.get("concepts", ""),
            "fingerprint": mv.tags.get("fingerprint"),
            "aliases": sorted(aliases.get(str(mv.version), [])),
        }
        for mv in client.search_model_versions(f"name = '{model_name}'")
    ]
    return sorted(rows, key=lambda row: int(row["version"]))


def missing_versions(recorded: list[dict], tracking_uri: str | None) -> list[dict]:
    """The entries of registry.json whose version the store does not hold (with the same
    fingerprint): e.g. mlflow.db deleted or a fresh tracking server."""
    client, missing = _client(tracking_uri), []
    for entry in recorded:
        try:
            version = client.get_model_version(entry["model_name"], str(entry["version"]))
        except MlflowException:
            missing.append(entry)
            continue
        if entry.get("fingerprint") and version.tags.get("fingerprint") != entry["fingerprint"]:
            missing.append(entry)
    return missing


def registry_summary_or_hint(model_name: str, tracking_uri: str) -> list[dict]:
    """registry_summary, or a TrackingUnavailable that says how to rebuild the registry."""
    try:
        return registry_summary(model_name, tracking_uri)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise TrackingUnavailable(
            f"{tracking_uri} holds no registered model '{model_name}'; `lifelong run` registers "
            "every stored step (it rebuilds a deleted or new store from adapters/ and eval/).") from None


def _client(tracking_uri: str | None) -> MlflowClient:
    """An explicit URI beats mlflow.set_tracking_uri(), which also rewrites the process-wide
    MLFLOW_TRACKING_URI variable and so leaks into every later call in the process."""
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _tag_filter(**tags: str) -> str:
    """Backticks because our tag keys contain dots."""
    return " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())


def _already_exists(error: MlflowException) -> bool:
    """Concurrent flows may race to create the same experiment or model; losing is fine."""
    return error.error_code == "RESOURCE_ALREADY_EXISTS"


def _artifact_location(tracking_uri: str) -> str | None:
    """Keep a local SQLite store's artifacts next to the database rather than in
    ``./mlruns`` of whatever directory a worker happens to run in."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db_path = Path(tracking_uri.removeprefix("sqlite:///"))
    return (db_path.resolve().parent / "mlruns").as_uri()


def _ensure_experiment(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(
            name, artifact_location=_artifact_location(client.tracking_uri)
        )
    except MlflowException as error:
        if not _already_exists(error):
            raise
        return client.get_experiment_by_name(name).experiment_id


def _ensure_parent_run(
    client: MlflowClient,
    experiment_id: str,
    sequence_id: str,
    method: str,
    sequence_tags: dict[str, str],
) -> str:
    found = client.search_runs(
        [experiment_id],
        _tag_filter(**{SEQUENCE_ID: sequence_id, KIND: "sequence"}),
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"sequence-{method}-{sequence_id[:8]}",
        tags={**sequence_tags, SEQUENCE_ID: sequence_id, KIND: "sequence"},
    )
    return run.info.run_id


def _find_step_run(
    client: MlflowClient, experiment_id: str, sequence_id: str, snapshot: dict
) -> tuple[str | None, bool]:
    """(run id, whether its evaluation and model are logged) of this step's run. Only
    FINISHED runs count: a run that died while training or logging is incomplete."""
    tags = {
        SEQUENCE_ID: sequence_id,
        KIND: "step",
        STEP: str(snapshot["step"]),
        FINGERPRINT: snapshot["fingerprint"],
    }
    found = client.search_runs(
        [experiment_id],
        f"{_tag_filter(**tags)} and attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if not found:
        return None, False
    return found[0].info.run_id, found[0].data.tags.get(ATTACHED) == "true"


def _create_step_run(client: MlflowClient, experiment_id: str, parent_id: str, sequence_id: str,
                     snapshot: dict, **tags: str) -> str:
    """The nested run of one step (`snapshot`: its snapshot.json, or what a step in training
    will be: step, name, concepts); its params are the training config."""
    run = client.create_run(
        experiment_id,
        run_name=f"step-{snapshot['step']}-{snapshot['name']}",
        tags={PARENT_RUN_ID: parent_id, KIND: "step", SEQUENCE_ID: sequence_id,
              STEP: str(snapshot["step"]), CONCEPT: snapshot["concepts"][-1]["name"], **tags},
    )
    client.log_batch(run.info.run_id, params=_step_params(snapshot), synchronous=True)
    return run.info.run_id


def start_step_run(snapshot: dict, inputs: str, *, experiment: str, sequence_id: str,
                   sequence_tags: dict[str, str] | None = None, tracking_uri: str | None = None) -> str:
    """Open the run of a step whose training starts now (live loss curve: `LiveLoss`). A run
    left RUNNING by a killed training of the same inputs is marked FAILED, never resumed."""
    client = _client(tracking_uri)
    experiment_id = _ensure_experiment(client, experiment)
    parent_id = _ensure_parent_run(client, experiment_id, sequence_id, snapshot["method"],
                                   sequence_tags or {})
    stale = client.search_runs(
        [experiment_id],
        f"{_tag_filter(**{SEQUENCE_ID: sequence_id, KIND: 'step', INPUTS: inputs})} "
        "and attributes.status = 'RUNNING'",
    )
    for run in stale:
        client.set_terminated(run.info.run_id, "FAILED")
    return _create_step_run(client, experiment_id, parent_id, sequence_id, snapshot, **{INPUTS: inputs})


def end_step_run(run_id: str, fingerprint: str | None, tracking_uri: str | None = None) -> None:
    """FINISHED with the snapshot's fingerprint (registration finds it by that), or FAILED
    (fingerprint None: the training raised)."""
    client = _client(tracking_uri)
    if fingerprint is None:
        client.set_terminated(run_id, "FAILED")
        return
    client.set_tag(run_id, FINGERPRINT, fingerprint)
    client.set_terminated(run_id, "FINISHED")


class LiveLoss:
    """on_step callback of train_concept: the loss curve of a live step run, in batches (one
    request per `Throttle` interval; the caller flushes the rest at the end)."""

    def __init__(self, run_id: str, tracking_uri: str | None = None):
        self.client, self.run_id, self.pending = _client(tracking_uri), run_id, []
        self.throttle = Throttle()

    def __call__(self, step: int, loss: float, denoise: float) -> None:
        now = int(time.time() * 1000)
        self.pending += [Metric("train_loss", loss, now, step), Metric("train_denoise", denoise, now, step)]
        if self.throttle.due():
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending, synchronous=True)
            self.pending = []


def _log_training_curve(client: MlflowClient, run_id: str, snapshot_dir: Path) -> None:
    """The loss curve from train_log.json, for a step trained without a live run."""
    train_log = _read_json(snapshot_dir / "train_log.json")
    now = int(time.time() * 1000)
    metrics = [Metric("train_loss", float(v), now, i) for i, v in enumerate(train_log["loss"])]
    # the denoising part alone; it differs from train_loss by the method's regularizer
    metrics += [Metric("train_denoise", float(v), now, i) for i, v in enumerate(train_log.get("denoise", []))]
    client.log_batch(run_id, metrics=metrics, synchronous=True)


def _attach_step(client: MlflowClient, run_id: str, snapshot: dict, snapshot_dir: Path,
                 eval_dir: Path, page: VersionPage) -> None:
    """Evaluation, snapshot and model on the step's run; a failure marks the run FAILED so a
    retry logs a fresh, complete run instead of reusing a partial one."""
    eval_metrics = _read_json(eval_dir / "metrics.json")
    try:
        client.log_batch(run_id, metrics=_step_metrics(snapshot, snapshot_dir, eval_metrics),
                         synchronous=True)
        client.log_artifact(run_id, str(eval_dir / "grid.png"))
        client.log_artifact(run_id, str(eval_dir / "metrics.json"), "eval")
        client.log_artifacts(run_id, str(snapshot_dir), "snapshot")
        client.log_text(run_id, page.description, "version.md")
        model = _log_model(client, run_id, snapshot_dir)
        for key, value in {FINGERPRINT: snapshot["fingerprint"], ATTACHED: "true",
                           MODEL_URI: model.model_uri, MODEL_ID: model.model_id,
                           MEANINGFUL: str(bool(eval_metrics.get("meaningful"))).lower()}.items():
            client.set_tag(run_id, key, value)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def _log_model(client: MlflowClient, run_id: str, snapshot_dir: Path):
    """The step as an MLflow pyfunc model, logged in its run. log_model is fluent API: the
    client's URI is scoped to this call (set_tracking_uri would leak into the process) and
    the run is resumed for it (its status is set by the caller afterwards)."""
    with _use_tracking_uri(client.tracking_uri), mlflow.start_run(run_id=run_id):
        return log_snapshot_model(snapshot_dir)


def _step_params(snapshot: dict) -> list[Param]:
    """Scalar train config plus what identifies the step; explicit fields win on clashes."""
    concept = snapshot["concepts"][-1]
    params = {
        key: value
        for key, value in snapshot.get("config", {}).items()
        if value is None or isinstance(value, (str, int, float, bool))
    }
    params.update(
        method=snapshot["method"],
        base_model=snapshot["base_model"],
        concept=concept["name"],
        token=concept["token"],
        class_word=concept["class_word"],
        step=snapshot["step"],
    )
    return [Param(_mlflow_key(key), str(value)) for key, value in params.items()]


def _step_metrics(snapshot: dict, snapshot_dir: Path, eval_metrics: dict) -> list[Metric]:
    """Training time and the evaluation, at the sequence step so values line up across the
    step runs. ``log_batch`` splits into MLflow's batch limits itself."""
    now, step = int(time.time() * 1000), int(snapshot["step"])
    seconds = read_timing(snapshot_dir).get("seconds")  # none for a snapshot DVC restored
    metrics = [Metric("train_seconds", float(seconds), now, step)] if seconds is not None else []
    metrics += [Metric(key, value, now, step) for key, value in _numeric_leaves(eval_metrics)]
    return metrics


def _numeric_leaves(tree: dict, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, float]]:
    """Flatten nested dicts so new evaluation keys get logged without code changes."""
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, dict):
            yield from _numeric_leaves(value, path)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield _mlflow_key(".".join(path)), float(value)


def _with_interval(figures: list[tuple[str, float | None, list[float] | None]]
                   ) -> Iterator[tuple[str, float | None]]:
    """(name, value) of each figure, then its interval's ends as name_lo and name_hi."""
    for name, value, interval in figures:
        yield name, value
        if interval is not None:
            yield from ((f"{name}_lo", interval[0]), (f"{name}_hi", interval[1]))


def _mlflow_key(name: str) -> str:
    """MLflow keys allow alphanumerics, ``_ - . /`` and spaces; slashes would make keys
    path-like, so they are replaced along with everything else."""
    return re.sub(r"[^\w.\- ]", "_", name)


def _ensure_version(
    client: MlflowClient, model_name: str, run_id: str, snapshot: dict, page: VersionPage
) -> tuple[str, bool]:
    """Find the version with this snapshot's fingerprint or create it, with the page's
    description and tags; returns (version, created) once the version is READY."""
    _ensure_registered_model(client, model_name)
    fingerprint = snapshot["fingerprint"]
    found = client.search_model_versions(
        f"name = '{model_name}' and tags.fingerprint = '{fingerprint}'", max_results=1
    )
    if found:
        version, created = str(found[0].version), False
    else:
        tags = client.get_run(run_id).data.tags
        # the registry resolves a models:/m-... source through the process-wide tracking
        # URI, which is not this client's inside a Prefect worker
        with _use_tracking_uri(client.tracking_uri):
            version_entity = client.create_model_version(
                model_name, source=tags[MODEL_URI], run_id=run_id, model_id=tags[MODEL_ID],
                tags=page.tags, description=page.description, await_creation_for=0
            )
        version, created = str(version_entity.version), True
    _wait_ready(client, model_name, version)
    if not created:  # the page may be new (scores so far), the weights are the same
        client.update_model_version(model_name, version, description=page.description)
    return version, created


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name, description=MODEL_DESCRIPTION)
    except MlflowException as error:
        if not _already_exists(error):
            raise
        client.update_registered_model(name, description=MODEL_DESCRIPTION)  # older wording


def _wait_ready(client: MlflowClient, name: str, version: str) -> None:
    """Some registries finish versions asynchronously; an alias must not point at a
    version that cannot be loaded yet."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (status := client.get_model_version(name, version).status) == _PENDING:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} v{version} still {status} after {READY_TIMEOUT_S}s")
        time.sleep(1)
    if status != _READY:
        raise RuntimeError(f"{name} v{version} registration ended as {status}")
