"""Local servers (Prefect, MLflow) started for the duration of a command or a test.

Every DVC stage is its own process; without a server each would start Prefect's temporary
server (12-35 s on 2 cores). One loopback server for the whole `dvc repro` costs that once,
and its database (PREFECT_HOME) keeps the run history for the Prefect UI afterwards.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}; see {log}")
        with suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"server not healthy at {url} after {timeout:.0f} s; see {log}")


def die_with_parent() -> None:
    """For Popen's preexec_fn: on Linux the child gets SIGTERM when the command that started it
    dies, even by `kill -9` (no `finally` runs then), so no server outlives its run."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def yield_to_training() -> None:
    """For Popen's preexec_fn of a server that runs beside the training: die with the parent,
    and take the CPU only when no other process wants it (SCHED_IDLE, inherited by every
    thread). Torch's two threads meet at the end of every operation, so a wakeup of the server
    that preempts one of them can stall both (reports/orchestration.md, session 21). The
    server still answers at once when the worker waits for its reply: a core is free then."""
    die_with_parent()
    with suppress(AttributeError, OSError):  # not on Linux: normal priority
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def stop_group(process: subprocess.Popen) -> None:
    """Stop the server and every worker it forked (they share its process group)."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # reap workers left behind


@contextmanager
def background_server(cmd: list[str], health_url: str, env: dict, log: Path,
                      timeout: float = 180.0, preexec_fn=die_with_parent):
    """Run `cmd` in its own process group until the block ends; output goes to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=preexec_fn)
    try:
        wait_healthy(health_url, process, log, timeout)
        yield process
    finally:
        stop_group(process)


def prefect_api_url() -> str:
    """PREFECT_API_URL if set, else the loopback address `prefect_api` will serve on: known
    before the server starts, so that a stage worker can start beside it."""
    return os.environ.get("PREFECT_API_URL") or f"http://127.0.0.1:{free_port()}/api"


# Server loops that act on deployment and worker runs only (schedules, late and paused runs,
# work-pool health, cancelled subflows, expired leases). The flows of `lifelong run` run in
# its own worker, so they have nothing to do there, yet each polls the database every few
# seconds beside the training.
DEPLOYMENT_SERVICES = ("scheduler", "late_runs", "foreman", "pause_expirations",
                       "cancellation_cleanup", "repossessor")


@contextmanager
def prefect_api(home: Path, url: str):
    """Serve `url` from a server started here, unless PREFECT_API_URL already names one."""
    if os.environ.get("PREFECT_API_URL"):
        yield url
        return
    port = str(urlsplit(url).port)
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               **{f"PREFECT_SERVER_SERVICES_{name.upper()}_ENABLED": "false"
                  for name in DEPLOYMENT_SERVICES})
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
           "--port", port]
    with background_server(cmd, f"{url}/health", env, Path(home) / "server.log",
                           preexec_fn=yield_to_training):
        yield url
