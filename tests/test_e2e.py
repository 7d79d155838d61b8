"""End to end, with every part real: Prefect (test harness and a real `prefect server`),
MLflow (a SQLite store in the project), DVC (in a temporary git repository)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from tasks.store import default_tracking_uri
from tasks.tracking import LATEST_ALIAS, registry_summary

REPO = Path(__file__).resolve().parents[1]
CONCEPTS = ["striped-star", "dotted-heart", "checked-square"]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


# the registered model of params.yaml's default method (register.model_name: lifelong-{method})
MODEL = "lifelong-" + yaml.safe_load((REPO / "params.yaml").read_text())["train"]["method"]


def plumbing_params() -> dict:
    """The repo's params.yaml with the fastest base and evaluator and step counts cut to the bone."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"].update(model="tiny-random")
    params["ingest"].update(resolution=32)  # tiny-random's image size, not the world's
    params["evaluate"].update(clip_model="ld-tiny-clip", clip_weights=None, attribute_classifier=None,
                              seeds=[0, 1], steps=2)
    params["train"].update(steps=3)
    return params


def tiny_params(names: list[str]) -> dict:
    """plumbing_params() with a shorter sequence."""
    params = plumbing_params()
    params["sequence"] = {n: {"prev": p} for p, n in zip(["base"] + names, names)}
    return params


def make_project(root: Path, names: list[str]) -> Path:
    root.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root)
    shutil.copytree(REPO / "data" / "concepts", root / "data" / "concepts")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(names), sort_keys=False))
    return root


@pytest.fixture(scope="module")
def prefect_api_url():
    """One real Prefect server (the test harness) for the module: starting one costs 12-35 s."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


def cli_env(tmp_path: Path, prefect_api_url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PREFECT_HOME=str(tmp_path / "ph"),
               PREFECT_API_URL=prefect_api_url)
    return env


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def registry(project: Path, model: str = MODEL) -> list[dict]:
    return registry_summary(model, default_tracking_uri(project))


def test_dvc_repro_runs_chain_and_adding_a_concept_reruns_only_its_stages(tmp_path,
                                                                          prefect_api_url):
    project = make_project(tmp_path / "project", CONCEPTS[:2])
    env = cli_env(tmp_path, prefect_api_url)
    run(["git", "init", "-q"], project, env)
    run([str(BIN / "dvc"), "init", "-q"], project, env)

    first = run([str(BIN / "lifelong"), "run"], project, env)
    a, b, c = CONCEPTS
    assert stages_run(first) == {"base", "baseline", f"ingest@{a}", f"ingest@{b}", f"train@{a}",
                                 f"train@{b}", f"evaluate@{a}", f"evaluate@{b}", "continual",
                                 "register"}
    assert f"samples after the last step: {project / 'eval' / b / 'grid.png'}" in first
    figure = r"[-\d.]+ \[[-\d.]+, [-\d.]+\]"  # with its bootstrap interval over the 2 seeds
    assert re.search(rf"clip_i: A={figure}  LA={figure}  F={figure}  BWT={figure}", first)
    assert re.search(r"relevant-concept drift \(class prompts, base - final\): "
                     r"clip_t=[-+\d.]+ \[[-+\d.]+, [-+\d.]+\]", first)
    assert "Data and pipelines are up to date" in run([str(BIN / "dvc"), "repro"], project, env)

    # the tracking store deleted: `lifelong registry` says how to rebuild, `lifelong run` does
    (project / "mlflow.db").unlink()
    shutil.rmtree(project / "mlruns", ignore_errors=True)
    lost = subprocess.run([str(BIN / "lifelong"), "registry"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    assert lost.returncode == 2 and "Traceback" not in lost.stderr
    assert "`lifelong run` registers every stored step" in lost.stderr
    rebuilt = run([str(BIN / "lifelong"), "run"], project, env)
    assert "every stored step is registered again" in rebuilt
    assert stages_run(rebuilt) == {"register"}
    assert [(r["version"], r["step"]) for r in registry(project)] == [("1", 1), ("2", 2)]

    dag = run([str(BIN / "dvc"), "dag", "--md"], project, env)
    assert f"train@{a}" in dag and f"train@{b}" in dag

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sequence"][c] = {"prev": b}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    second = run([str(BIN / "lifelong"), "run"], project, env)
    # the base is scored on the new concept's class prompt too (drift reference)
    assert stages_run(second) == {f"ingest@{c}", "baseline", f"train@{c}", f"evaluate@{c}",
                                  "continual", "register"}
    base_metrics = yaml.safe_load((project / "eval" / "base" / "metrics.json").read_text())
    assert list(base_metrics["class_prompts"]) == ["star", "heart", "square"]

    rows = registry(project)
    assert [(r["version"], r["step"]) for r in rows] == [("1", 1), ("2", 2), ("3", 3)]
    assert rows[2]["aliases"] == sorted(["step-3", LATEST_ALIAS])
    assert rows[1]["aliases"] == ["step-2"]
    assert rows[2]["concepts"].split(",") == CONCEPTS


def test_cli_reports_bad_concept_data_in_one_line_without_touching_outputs(tmp_path,
                                                                           prefect_api_url):
    project = make_project(tmp_path / "project", CONCEPTS[:1])
    env = cli_env(tmp_path, prefect_api_url)
    run([str(BIN / "lifelong"), "ingest", CONCEPTS[0]], project, env)
    processed = project / "data" / "processed" / CONCEPTS[0]
    before = {p.name: p.read_bytes() for p in processed.iterdir()}
    (project / "data" / "concepts" / CONCEPTS[0] / "02.png").write_bytes(b"not a png")

    # a subprocess: Prefect's console handler writes to the real stderr, which capsys misses
    done = subprocess.run([str(BIN / "lifelong"), "ingest", CONCEPTS[0]], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("lifelong ingest: error:") and "02.png" in lines[-1]
    assert "Traceback" not in done.stderr, done.stderr
    assert {p.name: p.read_bytes() for p in processed.iterdir()} == before


def test_sequence_deployment_carries_schedule_and_project(tmp_path):
    from flows.lifelong import sequence_deployment

    project = make_project(tmp_path / "nightly", CONCEPTS[:1])
    deployment = sequence_deployment(str(project), cron="0 3 * * *")
    assert deployment.name == "lifelong-nightly"
    assert deployment.parameters == {"project_root": str(project.resolve())}
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
    # the UI's "Custom run" form: every parameter with its description
    form = deployment._parameter_openapi_schema.properties
    assert set(form) == {"project_root", "force", "new_concept", "scan_inbox"}
    assert "concept folder" in form["new_concept"]["description"]
    assert "data/inbox/" in form["scan_inbox"]["description"]
    assert deployment.concurrency_limit == 1  # one run per project; more wait (ENQUEUE)


@pytest.mark.parametrize("command", [["serve", "--cron", "0 3 * * *"], ["announce", "data/concepts"]])
def test_serve_and_announce_without_a_server_explain_how_to_start_one(command, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["--project", str(REPO), *command]) == 2
    assert "prefect server start" in capsys.readouterr().err


def test_announcing_a_missing_folder_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # never reached
    assert main(["--project", str(REPO), "announce", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'} is not a folder" in capsys.readouterr().err


def test_run_with_params_is_a_dvc_experiment():
    from flows.cli import dvc_command, parser

    assert dvc_command([], None) == ["repro"]
    args = parser().parse_args(["run", "-S", "train.method=lfs", "-S", "train.steps=10", "-n", "lfs"])
    assert dvc_command(args.set_param, args.name) == ["exp", "run", "-S", "train.method=lfs",
                                                     "-S", "train.steps=10", "-n", "lfs"]


def assert_stage_flows_reported(since: datetime) -> None:
    """The ingest flows run since `since` have their logs on the server (the worker drains them
    when stopped, not after each stage) and sent no heartbeat (it cost ~1 s per stage flow)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterStartTime, LogFilter,
                                                LogFilterFlowRunId)
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            start_time=FlowRunFilterStartTime(after_=since)))
        assert len(runs) == 3  # the three ingests (argparse's error comes before any flow)
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs])))
        finished = {log.flow_run_id for log in logs if "Finished in state" in log.message}
        assert finished == {r.id for r in runs}
        deadline = time.monotonic() + 60
        while True:  # the server stores events a few seconds after they arrive
            events = EventFilter(occurred=EventOccurredFilter(since=since),  # until: now
                                 event=EventNameFilter(prefix=["prefect.flow-run."]))
            names = [e.event for e in client.read_events(events, limit=50).events]
            if names.count("prefect.flow-run.Completed") >= 2 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert names.count("prefect.flow-run.Completed") == 2, names  # one ingest failed
        assert "prefect.flow-run.heartbeat" not in names


def test_a_runs_stages_go_to_one_warm_worker_that_outlives_their_errors(tmp_path, monkeypatch,
                                                                         prefect_api_url):
    """flows/worker.py: `lifelong run` starts it; each stage command hands it its arguments
    and returns its exit code (None here: nobody served it, the command runs itself)."""
    from flows.worker import TIMES_ENV, WORKER_ENV, hand_to_worker, stage_worker, stop_worker

    project = make_project(tmp_path / "project", CONCEPTS[:1])
    processed = project / "data" / "processed" / CONCEPTS[0]
    times = tmp_path / "stage_times.jsonl"
    monkeypatch.chdir(project)
    started = datetime.now(timezone.utc)
    with stage_worker(dict(cli_env(tmp_path, prefect_api_url), **{TIMES_ENV: str(times)})) as env:
        monkeypatch.setenv(WORKER_ENV, env[WORKER_ENV])
        assert hand_to_worker(["registry"], "registry") is None  # not a stage: runs itself
        assert hand_to_worker(["ingest", CONCEPTS[0]], "ingest") == 0
        assert (processed / "manifest.json").exists()
        assert hand_to_worker(["ingest", "no-such-concept"], "ingest") == 2  # a user error
        assert hand_to_worker(["train"], "train") == 2  # argparse: the name is missing
        (processed / "manifest.json").unlink()
        assert hand_to_worker(["ingest", CONCEPTS[0]], "ingest") == 0  # still serving
        assert (processed / "manifest.json").exists()
        stop_worker(env)  # `lifelong run` stops it while the server runs: it drains its logs
        assert hand_to_worker(["ingest", CONCEPTS[0]], "ingest") is None  # the worker is gone
    assert_stage_flows_reported(started)
    # the worker timed each stage it ran (benchmarks.orchestration splits the tax with them)
    records = [json.loads(line) for line in times.read_text().splitlines()]
    assert [r["argv"] for r in records] == [["ingest", CONCEPTS[0]], ["ingest", "no-such-concept"],
                                            ["train"], ["ingest", CONCEPTS[0]]]
    assert all(r["flow_seconds"] >= 0 and r["after_seconds"] >= 0 for r in records)
