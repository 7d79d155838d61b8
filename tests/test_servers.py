"""A killed command leaves no server or stage worker behind (flows/servers.py, flows/worker.py)."""
from __future__ import annotations

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


def test_prefect_server_and_stage_worker_stop_when_their_command_is_killed(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SERVER, str(tmp_path / "home")],
                              cwd=Path(__file__).resolve().parents[1], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        url, worker = holder.stdout.readline().split()
        assert url.startswith("http://127.0.0.1:") and answers(url) and serves(worker)
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
