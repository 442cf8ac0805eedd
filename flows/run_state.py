"""Run directories of the training pipeline: one per run, resumable after a kill.

A run is identified by its *run key*: the hash of its whole configuration and the content of its
source. Each run directory holds ``state.json`` (run key, Prefect flow run, status) and a lock file
that the live run holds (the OS releases it when the process dies, even on kill -9). A new run
whose key matches an unfinished run directory whose lock is free adopts that directory: training
resumes from its checkpoint and registration finishes the version it may have created. A live
run's directory is never adopted, so two runs at once never share a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from gru4rec.io import sha256_json, write_json_atomic

STATE = "state.json"
LOCK = ".lock"


@dataclass
class RunDirectory:
    path: Path
    lock: FileLock
    previous: dict | None  # state.json of the interrupted run it resumes, if any


def run_key(config_json: dict, source_key: str) -> str:
    settings = {k: v for k, v in config_json.items() if k != "workdir"}  # where, not what
    return sha256_json({"config": settings, "source": source_key})


def _try_lock(directory: Path) -> FileLock | None:
    lock = FileLock(str(directory / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def _interrupted(runs: Path, key: str) -> RunDirectory | None:
    """The newest unfinished run directory with this key that no live process holds."""
    for state_file in sorted(runs.glob(f"*/{STATE}"), reverse=True):
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if state.get("run_key") != key or state.get("status") == "completed":
            continue
        lock = _try_lock(state_file.parent)
        if lock is not None:
            return RunDirectory(state_file.parent, lock, state)
    return None


def open_run_directory(workdir: Path, key: str, flow_run_id: str) -> RunDirectory:
    """Adopt the interrupted run with this key, or make a new run directory; hold its lock."""
    runs = workdir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run = _interrupted(runs, key)
    if run is None:
        path = runs / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}-{flow_run_id[:8]}"
        path.mkdir()
        run = RunDirectory(path, _try_lock(path), None)
    write_state(run.path, key, flow_run_id, "running")
    return run


def write_state(path: Path, key: str, flow_run_id: str, status: str, **extra) -> None:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(path / STATE, {"run_key": key, "flow_run_id": flow_run_id, "status": status, "at": now, **extra})


def mark_flow_run_crashed(flow_run_id: str, reason: str) -> bool:
    """Set a flow run that is still RUNNING (its process was killed) to Crashed. True if it was."""
    from prefect import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        try:
            flow_run = client.read_flow_run(flow_run_id)
        except Exception:  # noqa: BLE001 - another server's run, or pruned: nothing to mark
            return False
        if flow_run.state is None or not flow_run.state.is_running():
            return False
        client.set_flow_run_state(flow_run_id, Crashed(message=reason), force=True)
        return True
