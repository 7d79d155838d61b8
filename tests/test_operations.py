"""Operating it, against real servers: `prefect server start` on 127.0.0.1, the sequence
served as a deployment (`lifelong serve`), runs created through the API as the UI's "Run"
button does; concepts arrive through the inbox and a `concept.arrived` event (`lifelong
announce`), whose automation fills the run form's `new_concept`."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from flows.servers import background_server, free_port
from tasks.store import default_tracking_uri
from tasks.tracking import LATEST_ALIAS, registry_summary
from tests.test_e2e import BIN, CONCEPTS, MODEL, make_project

pytestmark = pytest.mark.slow

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with background_server(cmd, f"{url}/health", env, home / "server.log"):
        yield url, env


def flow_runs(deployment_id) -> list:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def read():
        async with get_client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return asyncio.run(read())


def artifacts(keys: list[str]) -> dict:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
            return {a.key: a for a in found}
    return asyncio.run(read())


@pytest.fixture
def api(prefect_server):
    """This process's Prefect client talks to the real server (settings are read once at
    import, so setting the environment variable here would not reach them)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server[0]}):
        yield prefect_server


def test_inbox_and_announced_concepts_become_versions_one_run_at_a_time(tmp_path, api, monkeypatch):
    from prefect.deployments import run_deployment

    url, env = api
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = make_project(tmp_path / "served", CONCEPTS[:1])
    first, arriving, given = CONCEPTS
    # the arriving concepts live outside the sequence until they are taken in
    inbox = project / "data" / "inbox"
    inbox.mkdir(parents=True)
    (project / "data" / "concepts" / arriving).rename(inbox / arriving)
    bad = inbox / "bad-one"
    bad.mkdir()
    (bad / "concept.yaml").write_text("token: <c1>\nclass_word: star\n")  # a taken token, no photos
    outside = tmp_path / "photos-of-mine"
    (project / "data" / "concepts" / given).rename(outside)

    serve_env = dict(env, PREFECT_API_URL=url, PREFECT_RUNNER_POLL_FREQUENCY="2",
                     PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    server_log = open(tmp_path / "serve.log", "w")
    serving = subprocess.Popen([str(BIN / "lifelong"), "--project", str(project), "serve"], env=serve_env,
                               stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        name = f"lifelong-sequence/lifelong-{project.name}"
        deadline = time.monotonic() + 120
        while True:  # the deployment exists once `serve` has registered it
            try:
                first_run = run_deployment(name, timeout=0)
                break
            except Exception:
                if time.monotonic() > deadline or serving.poll() is not None:
                    raise
                time.sleep(2)
        second_run = announced_run(project, outside, first_run, serve_env)
        assert second_run.parameters["new_concept"] == str(outside)
        deadline = time.monotonic() + 900
        while True:
            runs = {r.id: r for r in flow_runs(first_run.deployment_id)}
            if all(runs[r.id].state_type.value in FINAL for r in (first_run, second_run)):
                break
            assert time.monotonic() < deadline, f"runs did not finish: {runs}"
            time.sleep(3)
    finally:
        os.killpg(serving.pid, 15)
        serving.wait(timeout=60)
        server_log.close()
    one, two = runs[first_run.id], runs[second_run.id]
    log = (tmp_path / "serve.log").read_text()[-3000:]
    assert one.state_type.value == "COMPLETED" and two.state_type.value == "COMPLETED", log
    earlier, later = sorted((one, two), key=lambda r: r.start_time)
    assert later.start_time >= earlier.end_time  # never beside each other: one run per project
    # the inbox concept, then the run form's, each a new version with the right aliases
    order = [first, arriving, "photos-of-mine"]
    assert yaml.safe_load((project / "params.yaml").read_text())["sequence"] == {
        first: {"prev": "base"}, arriving: {"prev": first}, "photos-of-mine": {"prev": arriving}}
    rows = registry_summary(MODEL, default_tracking_uri(project))
    assert [(r["step"], r["concepts"]) for r in rows] == [
        (i + 1, ",".join(order[: i + 1])) for i in range(3)]
    assert rows[-1]["aliases"] == sorted(["step-3", LATEST_ALIAS]) and rows[1]["aliases"] == ["step-2"]
    assert (outside / "concept.yaml").exists()  # the user's folder stays where it was
    error = (inbox / "rejected" / "bad-one" / "error.txt").read_text()
    assert "<c1>" in error and not (inbox / arriving).exists()
    found = artifacts(["new-concepts", "step-2-" + arriving, "continual-report", "train-" + arriving])
    assert set(found) == {"new-concepts", "step-2-" + arriving, "continual-report", "train-" + arriving}
    assert f"Registered as **{MODEL}** version 2" in found["step-2-" + arriving].data
    assert "A=" in found["continual-report"].data and found["train-" + arriving].data == 100.0
    # the later run resumed: the steps the earlier run learnt (first and the inbox's, in
    # either order of the runs) were skipped, not retrained
    for name in order[:2]:
        snapshot = project / "adapters" / name / "snapshot.json"
        assert snapshot.stat().st_mtime < later.start_time.timestamp()
    check_outputs(project, order)


def announced_run(project: Path, folder: Path, first_run, env: dict):
    """`lifelong announce FOLDER` once the deployment's automation exists; the flow run that
    the automation then creates."""
    import asyncio

    from prefect.client.orchestration import get_client

    async def automations():
        async with get_client() as client:
            return await client.read_resource_related_automations(
                f"prefect.deployment.{first_run.deployment_id}")
    deadline = time.monotonic() + 60
    while not asyncio.run(automations()):
        assert time.monotonic() < deadline, "the deployment has no concept.arrived automation"
        time.sleep(1)
    subprocess.run([str(BIN / "lifelong"), "--project", str(project), "announce", str(folder)],
                   env=env, check=True)
    deadline = time.monotonic() + 60
    while True:
        runs = [r for r in flow_runs(first_run.deployment_id) if r.id != first_run.id]
        if runs:
            assert len(runs) == 1, runs  # one event, one run
            return runs[0]
        assert time.monotonic() < deadline, "no run after concept.arrived"
        time.sleep(1)


def check_outputs(project: Path, order: list[str]) -> None:
    """What the flow leaves after the last step: metrics, grid, R, drift, the MLflow report."""
    from mlflow import MlflowClient

    metrics = yaml.safe_load((project / "eval" / order[-1] / "metrics.json").read_text())
    assert metrics["step"] == 3 and set(metrics["per_concept"]) == set(order)
    assert metrics["meaningful"] is False
    assert Image.open(project / "eval" / order[-1] / "grid.png").height == 6 * 100  # 3 concepts + 3 class prompts
    continual = yaml.safe_load((project / "metrics" / "continual.json").read_text())
    R = continual["clip_i"]["R"]
    assert continual["clip_i"]["concepts"] == order and R[0][1] is None
    assert R[2] == [metrics["per_concept"][c]["clip_i"] for c in order]
    assert len(metrics["per_concept"][order[0]]["samples"]["clip_i"]) == 2  # one per seed
    lo, hi = continual["clip_i"]["F_ci"]
    assert lo <= hi and len(continual["drift"]["clip_t"]["drift_ci"]) == 2
    base = yaml.safe_load((project / "eval" / "base" / "metrics.json").read_text())
    assert base["step"] == 0 and base["per_concept"] == {}
    words = list(base["class_prompts"])
    drift = {w: base["class_prompts"][w]["clip_t"] - metrics["class_prompts"][w]["clip_t"] for w in words}
    assert continual["drift"]["clip_t"]["per_class"] == pytest.approx(drift)
    assert Image.open(project / "metrics" / "R_heatmap.png").width > 300
    client = MlflowClient(default_tracking_uri(project))
    (parent,) = client.search_runs([client.get_experiment_by_name("lifelong-diffusion").experiment_id],
                                   "tags.`lifelong.kind` = 'sequence'")
    assert parent.data.metrics["clip_i.F"] == pytest.approx(continual["clip_i"]["F"])
    assert parent.data.metrics["clip_i.F_lo"] == pytest.approx(lo)
    assert "continual/R_heatmap.png" in {f.path for f in client.list_artifacts(parent.info.run_id, "continual")}
