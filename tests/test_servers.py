"""A killed command leaves no server behind (flows/servers.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HOLD_SERVER = """
import sys, time
from pathlib import Path
from flows.servers import prefect_api
with prefect_api(Path(sys.argv[1])) as url:
    print(url, flush=True)
    time.sleep(600)
"""


def answers(url: str) -> bool:
    with suppress(OSError):
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    return False


def test_prefect_server_stops_when_its_command_is_killed(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SERVER, str(tmp_path / "home")],
                              cwd=Path(__file__).resolve().parents[1], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        url = holder.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and answers(url)
        holder.send_signal(signal.SIGKILL)  # no `finally` runs in the holder
        holder.wait(timeout=30)
        deadline = time.monotonic() + 60
        while answers(url) and time.monotonic() < deadline:
            time.sleep(1)
        assert not answers(url), "the Prefect server outlived the command that started it"
    finally:
        holder.kill()
