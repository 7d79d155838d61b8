"""`lifelong`: the command line that DVC stages and users call; each command runs a flow.

    lifelong run                 the whole sequence: `dvc repro` with a local Prefect server
    lifelong run -S train.method=lfs [-n NAME]   the same as a DVC experiment (`dvc exp show`)
    lifelong run --engine prefect   the same DAG as one Prefect flow, without DVC
    lifelong pretrain            re-create the world preset in models/world (about an hour)
    lifelong base | ingest NAME | train NAME | evaluate NAME | continual | register   one stage
    lifelong add PATH [--name N] [--run]   check a concept folder and append it to the sequence
    lifelong serve [--cron CRON]  serve the sequence flow to a Prefect server (UI, schedules,
                                 new concepts from the run form, data/inbox/ or an event)
    lifelong announce PATH       send `concept.arrived`: the served deployment takes PATH in
    lifelong world-concepts [NAME ...]   render the world's concept folders into data/concepts
    lifelong registry            the registered versions of the current method
    lifelong generate PROMPT --model models:/NAME@ALIAS | --snapshot adapters/NAME [-n 8] [-o PNG]
                                 images of a registered version or a snapshot: one PNG or a grid
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lifelong_diffusion.project import Project

CONCEPT_FOLDER = "folder with concept.yaml and 3-10 photos"  # what `add` and `announce` take


def _env_defaults(root: Path) -> None:
    """Defaults that make Prefect quiet and patient on small machines; the user's env wins."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    # MLflow draws a progress bar per artifact folder it copies at registration: noise in logs
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's default (7 retries, doubling waits) spends minutes on a stopped server
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")


def dvc_command(set_params: list[str], name: str | None) -> list[str]:
    """`dvc repro`, or `dvc exp run` when params are changed or the run is named: an
    experiment that `dvc exp show` lists beside the others (e.g. one per method)."""
    if not set_params and not name:
        return ["repro"]
    return ["exp", "run", *[arg for value in set_params for arg in ("-S", value)],
            *(["-n", name] if name else [])]


def run(root: Path, engine: str, set_params: list[str] = (), name: str | None = None) -> int:
    from tasks.store import check_tracking_server, default_tracking_uri

    Project(root).check()  # bad params or concept folders fail here, before DVC deletes outputs
    check_tracking_server(default_tracking_uri(root))  # one request, not MLflow's retries later
    if engine == "prefect":
        from flows.lifelong import lifelong_sequence

        check_registry(Project(root))
        quiet_user_error_tracebacks()
        lifelong_sequence(str(root))
        return 0
    from flows.servers import die_with_parent, prefect_api, prefect_api_url
    from flows.worker import stage_worker, stop_worker

    url = prefect_api_url()
    # DVC runs each stage's `lifelong ...` through the shell: put this venv first on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, PREFECT_API_URL=url, PATH=path)
    # one Prefect server for all stages (without it every stage would start its own, ~20 s),
    # and one worker that runs them with its imports done (flows/worker.py); the registry's
    # check (MLflow's imports and store, seconds) runs while they start
    with (Project(root).lock(), stage_worker(env) as env, ThreadPoolExecutor(1) as pool):
        registry_checked = pool.submit(check_registry, Project(root))
        with prefect_api(Path(os.environ["PREFECT_HOME"]), url):
            registry_checked.result()  # before DVC: a lost registry makes `register` run again
            print(f"Prefect API: {url}", flush=True)
            code = subprocess.call([sys.executable, "-m", "dvc", *dvc_command(set_params, name)],
                                   cwd=root, env=env, preexec_fn=die_with_parent)
            stop_worker(env)
    if code == 0:
        print_outcome(Project(root))
    return code


def check_registry(project: Project) -> None:
    """The store still holds what registry.json names (else the register stage is made to
    run again and rebuild it)."""
    if not project.registry_file.exists():
        return  # nothing registered yet: no MLflow import (seconds) to pay
    from tasks.register import forget_lost_registry
    from tasks.store import default_tracking_uri

    lost = forget_lost_registry(project)
    if lost:
        print(f"{default_tracking_uri(project.root)} lacks {len(lost)} model version(s) that "
              "registry.json names (store deleted or replaced?): every stored step is "
              "registered again.", flush=True)


def add(root: Path, source: Path, name: str | None, run_now: bool) -> int:
    """Check a concept folder, copy it into data/concepts/ and append it to the sequence."""
    from lifelong_diffusion.arrivals import add_concept

    project = Project(root)
    with project.lock():  # never edit params.yaml under a running sequence
        name = add_concept(project, source, name)
    print(f"added {name} ({project.concept_dir(name)}) after "
          f"{project.previous(name)} in {root / project.params_file}")
    if not run_now:
        print("learn it with `lifelong run` (only its steps and the registration run)")
        return 0
    return run(root, "dvc")


def print_outcome(project: Project) -> None:
    """Where to look after a run: the last grid and the forgetting summary."""
    last = project.sequence()[-1]
    print(f"\nsamples after the last step: {project.eval_dir(last) / 'grid.png'}")
    from lifelong_diffusion.cl_metrics import format_report

    if project.summary_file.exists():
        print(f"R heatmaps and curves: {project.summary_file.parent}/")
        print("\n".join(format_report(json.loads(project.summary_file.read_text()))))


def no_server(command: str) -> bool:
    """True (with the way out printed) when PREFECT_API_URL names no server: `serve` and
    `announce` need a real one, never a temporary server of their own."""
    if os.environ.get("PREFECT_API_URL"):
        return False
    print(f"lifelong {command}: error: PREFECT_API_URL is not set. Start a server first:\n"
          "  PREFECT_HOME=.prefect .venv/bin/prefect server start\n"
          "then: export PREFECT_API_URL=http://127.0.0.1:4200/api", file=sys.stderr)
    return True


def serve(root: Path, cron: str | None) -> int:
    """Serve the sequence as a deployment; only a real server runs schedules."""
    if no_server("serve"):
        return 2
    from prefect import serve as prefect_serve

    from flows.lifelong import sequence_deployment

    prefect_serve(sequence_deployment(str(root), cron))
    return 0


def announce(root: Path, source: Path) -> int:
    """Tell the served deployment that a concept folder arrived (`concept.arrived`): its
    automation starts a run that takes the folder in, as the run form's `new_concept` does."""
    if no_server("announce"):
        return 2
    if not source.is_dir():
        print(f"lifelong announce: error: {source} is not a {CONCEPT_FOLDER}", file=sys.stderr)
        return 2
    from flows.lifelong import announce_concept

    announce_concept(str(root), str(source))
    print(f"sent concept.arrived for {source.resolve()}: the deployment served for {root} "
          "(`lifelong serve`) starts a run that adds it")
    return 0


def world_concepts(root: Path, names: list[str]) -> None:
    from lifelong_diffusion.world import DEFAULT_SEQUENCE, concept_by_name, write_concept_folder

    for name in names or DEFAULT_SEQUENCE:
        print(write_concept_folder(concept_by_name(name), Project(root).concept_dir(name).parent))


def show_registry(root: Path) -> None:
    from tasks.register import model_name_for
    from tasks.store import default_tracking_uri
    from tasks.tracking import registry_summary_or_hint

    method = Project(root).section("train").get("method", "naive")
    for row in registry_summary_or_hint(model_name_for(Project(root), method), default_tracking_uri(root)):
        print(json.dumps(row))


def generate(args) -> None:
    from flows.generate import generate_images, write_images
    from lifelong_diffusion.snapshot import load_snapshot

    if args.model:
        from tasks.mlflow_model import registered_snapshot
        from tasks.store import default_tracking_uri

        with tempfile.TemporaryDirectory() as tmp:  # the snapshot's tensors are read into memory
            snap = registered_snapshot(args.model, default_tracking_uri(args.project), Path(tmp))
    else:
        snap = load_snapshot(args.snapshot)
    seeds = list(range(args.seed, args.seed + args.num_images))
    images = generate_images(snap, args.prompt, seeds, args.steps, args.guidance, args.device)
    for path in write_images(images, seeds, args.prompt, args.output, args.each):
        print(path)


class OneLineUserErrors(logging.Filter):
    """Drops Prefect's console records of a task or flow failing with a user error: `main`
    prints that error as one line, and two tracebacks of ~30 lines each before it hid it.
    (The records still reach the Prefect server: the UI keeps the traceback.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True  # checked first: user_errors() imports torch (~10 s) for PromptError
        return not isinstance(record.exc_info[1], user_errors())


def quiet_user_error_tracebacks() -> None:
    import prefect  # noqa: F401  (configures logging: the console handler sits on the root logger)

    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, OneLineUserErrors) for f in handler.filters):
            handler.addFilter(OneLineUserErrors())


def stage(args) -> None:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows import stages as f

    quiet_user_error_tracebacks()
    root = str(args.project)
    # A flow's heartbeat thread sleeps in 1 s steps and is joined at the flow's end: ~1 s per
    # stage flow, 19 s of a default run (reports/orchestration.md). Prefect reads heartbeats
    # only to mark crashed deployment runs; a stage runs inside a foreground `lifelong run`.
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        {
            "pretrain": lambda: f.pretrain_flow(root),
            "base": lambda: f.base_flow(root),
            "ingest": lambda: f.ingest_flow(args.name, root),
            "train": lambda: f.train_flow(args.name, root),
            "evaluate": lambda: f.evaluate_flow(args.name, root),
            "register": lambda: f.register_flow(root),
            "continual": lambda: f.continual_flow(root),
        }[args.command]()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lifelong", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", type=Path, default=Path("."), help="project folder (params.yaml)")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the whole lifelong sequence")
    r.add_argument("--engine", choices=["dvc", "prefect"], default="dvc")
    r.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                   help="run as a DVC experiment with this param changed, e.g. train.method=lfs "
                        "(repeatable; compare experiments with `dvc exp show`)")
    r.add_argument("-n", "--name", help="name of the DVC experiment")
    for name in ("pretrain", "base", "register", "continual"):
        sub.add_parser(name, help=f"run the {name} stage")
    for name in ("ingest", "train", "evaluate"):
        sub.add_parser(name, help=f"run the {name} stage of one concept").add_argument("name")
    a = sub.add_parser("add", help="add a concept folder to the end of the sequence")
    a.add_argument("path", type=Path, help=CONCEPT_FOLDER)
    a.add_argument("--name", help="concept name (default: the folder's name)")
    a.add_argument("--run", action="store_true", help="then learn it (`lifelong run`)")
    an = sub.add_parser("announce", help="send concept.arrived: the served deployment adds the folder")
    an.add_argument("path", type=Path, help=CONCEPT_FOLDER)
    sv = sub.add_parser("serve", help="serve the sequence flow to a Prefect server")
    sv.add_argument("--cron", help="schedule, e.g. '0 3 * * *' for every night at 03:00")
    w = sub.add_parser("world-concepts", help="render world concept folders into data/concepts")
    w.add_argument("names", nargs="*")
    sub.add_parser("registry", help="list registered model versions")
    g = sub.add_parser("generate", help="generate images with a registered version or a snapshot")
    g.add_argument("prompt", help='e.g. "a photo of <c1> star"')
    source = g.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="URI",
                        help="a registered version: models:/NAME@ALIAS or models:/NAME/VERSION "
                             "(tracking store: MLFLOW_TRACKING_URI, else the project's mlflow.db)")
    source.add_argument("--snapshot", type=Path, metavar="DIR",
                        help="a snapshot folder, e.g. adapters/NAME")
    g.add_argument("-n", "--num-images", type=int, default=1, help="one image per seed")
    g.add_argument("--seed", type=int, default=0, help="the first seed")
    g.add_argument("--steps", type=int, default=20, help="DDIM sampling steps")
    g.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    g.add_argument("-o", "--output", type=Path, default=Path("generated.png"),
                   help="the image, or the grid of several")
    g.add_argument("--each", action="store_true",
                   help="with several images, also write OUTPUT-SEED.png")
    g.add_argument("--device", default="auto")
    return p


def user_errors() -> tuple[type[Exception], ...]:
    """Errors caused by the user's data or params: shown as one clear message, no traceback."""
    from flows.generate import PromptError
    from lifelong_diffusion.base_model import BaseModelError
    from lifelong_diffusion.fileio import LockedError
    from lifelong_diffusion.ingest import ConceptDataError
    from lifelong_diffusion.project import ParamsError
    from lifelong_diffusion.snapshot import SnapshotError
    from lifelong_diffusion.train import ConfigError
    from tasks.store import TrackingUnavailable

    return (ConceptDataError, ParamsError, BaseModelError, SnapshotError, PromptError,
            TrackingUnavailable, LockedError, ConfigError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    from flows.worker import hand_to_worker

    code = hand_to_worker(argv, args.command)  # a stage of `lifelong run`: its worker runs it
    if code is not None:
        return code
    args.project = args.project.resolve()
    _env_defaults(args.project)
    try:
        return dispatch(args)
    except user_errors() as exc:
        print(f"lifelong {args.command}: error: {exc}", file=sys.stderr)
        return 2


def dispatch(args) -> int:
    if args.command == "run":
        return run(args.project, args.engine, args.set_param, args.name)
    if args.command == "add":
        return add(args.project, args.path, args.name, args.run)
    if args.command == "serve":
        return serve(args.project, args.cron)
    if args.command == "announce":
        return announce(args.project, args.path)
    if args.command == "world-concepts":
        world_concepts(args.project, args.names)
    elif args.command == "registry":
        show_registry(args.project)
    elif args.command == "generate":
        generate(args)
    else:
        stage(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
