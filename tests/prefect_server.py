"""A real `prefect server start` for tests that need what only a server does (deployments,
schedules, automations): own PREFECT_HOME and port, stopped with its process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: Path, port: int, **extra_env: str) -> dict[str, str]:
    """This process's environment for a server on ``port`` and its clients, minus what an earlier
    in-process CLI call left behind for its temporary server: ``_prefect_env`` sets
    PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED=false, which would start a server whose automations
    never fire (CI failure of test_server_automations_notify_a_new_champion_and_a_failed_run)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_")}
    return {
        **inherited,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        **extra_env,
    }


@contextlib.contextmanager
def running_prefect_server(home: Path, **extra_env: str) -> Iterator[dict[str, str]]:
    """Start a Prefect server; yields the environment a client process needs (PREFECT_API_URL, ...)."""
    port = _free_port()
    env = server_env(home, port, **extra_env)
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed below
    prefect = str(Path(sys.executable).with_name("prefect"))
    server = subprocess.Popen(  # noqa: S603
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(env["PREFECT_API_URL"] + "/health", timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def run_cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command of this environment (gru4rec-pipeline, prefect) from the repository root."""
    exe = str(Path(sys.executable).with_name(args[0]))
    return subprocess.run(  # noqa: S603
        [exe, *args[1:]], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
