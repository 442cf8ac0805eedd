"""kill -9 of the CLI: nothing keeps running after it, and a rerun picks up what it left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.synthetic import synthetic_movielens

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from flows.cli import main; main()"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(REPO)}


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_cli_leaves_no_temporary_server(tmp_path):
    source = synthetic_movielens(tmp_path / "u.data")
    cli = subprocess.Popen(
        [*CLI, "prepare", "--source", str(source), "--out", str(tmp_path / "out")],
        env=_env(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        server = _wait_for(
            lambda: next((c for c in _children(cli.pid) if "uvicorn" in _cmdline(c)), None), 240, "the server"
        )
        assert _alive(server)
        # the CLI starts its watchdog once the server answers; kill -9 it while the flow runs
        _wait_for(lambda: any("import os, signal" in _cmdline(c) for c in _children(cli.pid)), 240, "the watchdog")
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait()
        _wait_for(lambda: not _alive(server), 30, "the orphaned server to stop")
    finally:
        if cli.poll() is None:
            cli.kill()
