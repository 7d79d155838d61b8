"""A killed command leaves no server or stage worker behind, and its Prefect server yields the
cores to the training (flows/servers.py, flows/worker.py)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HOLD_SERVER = """
import os, sys, time
from pathlib import Path
from flows.servers import prefect_api, prefect_api_url
from flows.worker import WORKER_ENV, stage_worker
url = prefect_api_url()
with stage_worker(dict(os.environ)) as env, prefect_api(Path(sys.argv[1]), url):
    print(url, env[WORKER_ENV], flush=True)
    time.sleep(600)
"""


def answers(url: str) -> bool:
    with suppress(OSError):
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    return False


def serves(socket_path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as conn, suppress(OSError):
        conn.connect(socket_path)
        return True
    return False


def server_threads(url: str) -> list[int]:
    """Thread ids of the process that listens on `url`'s port."""
    port = url.split(":")[2].split("/")[0]
    pids = subprocess.run(["pgrep", "-f", f"prefect server start .*--port {port}"],
                          capture_output=True, text=True).stdout.split()
    return [int(t) for pid in pids for t in os.listdir(f"/proc/{pid}/task")]


def services(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/admin/settings", timeout=10) as response:
        return json.load(response)["server"]["services"]


def test_prefect_server_and_stage_worker_stop_when_their_command_is_killed(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SERVER, str(tmp_path / "home")],
                              cwd=Path(__file__).resolve().parents[1], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        url, worker = holder.stdout.readline().split()
        assert url.startswith("http://127.0.0.1:") and answers(url) and serves(worker)
        # beside the training, the server yields the cores and runs no deployment services
        threads = server_threads(url)
        assert threads and {os.sched_getscheduler(t) for t in threads} == {os.SCHED_IDLE}
        running = services(url)
        assert not running["scheduler"]["enabled"] and not running["late_runs"]["enabled"]
        assert running["task_run_recorder"]["enabled"]  # the UI's task runs still recorded
        holder.send_signal(signal.SIGKILL)  # no `finally` runs in the holder
        holder.wait(timeout=30)
        deadline = time.monotonic() + 60
        while answers(url) and time.monotonic() < deadline:
            time.sleep(1)
        assert not answers(url), "the Prefect server outlived the command that started it"
        while serves(worker) and time.monotonic() < deadline:
            time.sleep(1)
        assert not serves(worker), "the stage worker outlived the command that started it"
    finally:
        holder.kill()
