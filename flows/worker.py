"""A warm process that runs the DVC stages of one `lifelong run`.

DVC starts every stage as its own `lifelong <stage>` process, and each would import torch,
diffusers, open_clip, Prefect and MLflow again: ~15 s per stage on 2 cores, most of the
orchestration tax (reports/orchestration.md). `lifelong run` starts one worker that has
imported them; a stage command then only hands its arguments to the worker over a Unix socket
in a private folder and waits for the exit code. The stage runs the same function with the
same arguments as in its own process (every stage seeds what it draws), so its outputs are the
same. Without a worker (plain `dvc repro`, or the worker gone) the command runs in its own
process as before.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager, suppress
from pathlib import Path

WORKER_ENV = "LIFELONG_STAGE_WORKER"  # the socket's path, set for the stages of one run
# Optional: a file the worker appends one JSON line per stage to (the seconds of its flow, and
# of the log drain and clean-up after it), so benchmarks.orchestration can tell time in a
# stage from time around it.
TIMES_ENV = "LIFELONG_STAGE_TIMES"
STAGES = ("base", "ingest", "train", "evaluate", "continual", "register")
SOCKET = "stages.sock"


def hand_to_worker(argv: list[str], command: str) -> int | None:
    """Run a stage command in the run's worker and return its exit code; None when there is
    no worker to run it (the caller then runs it itself)."""
    path = os.environ.get(WORKER_ENV)
    if not path or command not in STAGES:
        return None
    with socket.socket(socket.AF_UNIX) as conn:
        try:
            conn.connect(path)
        except OSError:
            return None  # nothing started yet: the stage runs here
        request = {"argv": argv, "cwd": os.getcwd()}
        try:
            conn.sendall(json.dumps(request).encode() + b"\n")
            reply = conn.makefile("rb").readline()
        except OSError:  # reset: the worker went away with this request unanswered
            reply = b""
    if not reply:
        print(f"lifelong {command}: error: the stage worker stopped during the stage; run "
              "`lifelong run` again to resume", file=sys.stderr)
        return 1
    return int(json.loads(reply)["code"])


def run_request(request: dict) -> int:
    """One stage, exactly as `lifelong <argv>` would run it in its own process."""
    from flows.cli import main

    os.chdir(request["cwd"])
    start = time.perf_counter()
    try:
        return int(main(request["argv"]) or 0)
    except SystemExit as exc:  # argparse's usage errors
        return exc.code if isinstance(exc.code, int) else 2
    except Exception:  # the traceback a stage process would print
        traceback.print_exc()
        return 1
    finally:
        # The stage's logs go on reaching the UI from Prefect's log thread (a batch every 2 s);
        # no drain per stage holds the next one back. `serve` drains once, when it stops.
        ran = time.perf_counter()
        sys.stdout.flush()
        sys.stderr.flush()
        gc.collect()  # the stage's models, before the next one loads its own
        record_times(request["argv"], flow_seconds=ran - start, after_seconds=time.perf_counter() - ran)


def record_times(argv: list[str], **seconds: float) -> None:
    """Append the stage's timings to the file TIMES_ENV names, if it names one."""
    if path := os.environ.get(TIMES_ENV):
        with open(path, "a") as out:
            out.write(json.dumps({"argv": argv, **seconds}) + "\n")


def serve(path: str) -> None:
    """Bind first (so `lifelong run` may start DVC at once), then import what the stages need
    while DVC and the Prefect server start; then run requests one at a time, as DVC sends them."""
    os.environ.pop(WORKER_ENV, None)  # the stages run here, never handed on again
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        import flows.stages  # noqa: F401  (Prefect)
        import tasks.evaluate  # noqa: F401  (torch, diffusers, open_clip)
        import tasks.register  # noqa: F401  (MLflow)
        import tasks.train  # noqa: F401
        from prefect.logging.handlers import APILogWorker

        # The imports' millions of objects live as long as the worker: out of the collector's
        # sight, each stage's gc.collect() takes milliseconds instead of 0.5 s (710k objects).
        gc.freeze()
        while True:
            conn, _ = server.accept()
            with conn:
                request = json.loads(conn.makefile("rb").readline())
                if request.get("stop"):  # the run is over: every stage's logs reach the UI first
                    # Unlinked before the reply, so a stage command started after the stop finds
                    # no worker and runs itself, instead of reaching a socket about to close.
                    os.unlink(path)
                    APILogWorker.drain_all(timeout=5)
                    conn.sendall(b"{}\n")
                    return
                code = run_request(request)
                conn.sendall(json.dumps({"code": code}).encode() + b"\n")


def stop_worker(env: dict) -> None:
    """Stop the worker that `env` names once it has drained its logs to the Prefect server;
    call it while the server still runs (a killed run's worker gets only a SIGTERM, and the
    logs of its last ~2 s may not reach the UI)."""
    if WORKER_ENV not in env:
        return  # it never started: the stages ran in their own processes
    with suppress(OSError), socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(60)  # a stage still running (DVC died under it) is not waited for longer
        conn.connect(env[WORKER_ENV])
        conn.sendall(json.dumps({"stop": True}).encode() + b"\n")
        conn.makefile("rb").readline()


@contextmanager
def stage_worker(env: dict):
    """Start a worker for the block; yield `env` with the socket's path for the stages."""
    from flows.servers import die_with_parent, stop_group

    folder = Path(tempfile.mkdtemp(prefix="lifelong-worker-"))  # mode 0700: this user only
    path = folder / SOCKET
    # its output is the run's: the stages print where DVC's own lines go
    process = subprocess.Popen([sys.executable, "-m", "flows.worker", str(path)], env=env,
                               start_new_session=True, preexec_fn=die_with_parent)
    try:
        deadline = time.monotonic() + 60
        while not path.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        # without a socket, the stages simply run in their own processes
        yield dict(env, **{WORKER_ENV: str(path)}) if path.exists() else env
    finally:
        stop_group(process)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    serve(sys.argv[1])
