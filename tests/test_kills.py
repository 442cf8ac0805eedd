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
@pytest.mark.parametrize("moment", ["server starting", "training"])
def test_kill_9_of_the_cli_leaves_no_temporary_server(tmp_path, moment):
    source = synthetic_movielens(tmp_path / "u.data", n_users=400)
    workdir = tmp_path / "work"
    cli = subprocess.Popen(_run_command(source, workdir), env=_env(tmp_path), cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server = _wait_for(
            lambda: next((c for c in _children(cli.pid) if "uvicorn" in _cmdline(c).split()), None), 240, "the server"
        )
        if moment == "training":  # the server idle and healthy, the flow deep in its work
            _wait_for(lambda: next(workdir.glob("runs/*/model.work/checkpoint.pt"), None), 300, "epoch 1")
        else:
            time.sleep(0.5)  # the watchdog notes the server within 0.2 s of its start
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait()
        _wait_for(lambda: not _alive(server), 30, "the orphaned server to stop")
    finally:
        if cli.poll() is None:
            cli.kill()


def _run_command(source: Path, workdir: Path) -> list[str]:
    return [*CLI, "run", "--source", str(source), "--workdir", str(workdir), "--registry-name", "killed",
            "--layers", "16", "--batch-size", "8", "--epochs", "25", "--threads", "1", "--set", "train.n_sample=16"]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_rerun_after_kill_9_resumes_the_run_and_marks_its_leftovers(tmp_path):
    import json

    import torch
    from mlflow import MlflowClient

    source = synthetic_movielens(tmp_path / "u.data", n_users=400)
    workdir = tmp_path / "work"
    cli = subprocess.Popen(_run_command(source, workdir), env=_env(tmp_path), cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        checkpoint = _wait_for(lambda: next(workdir.glob("runs/*/model.work/checkpoint.pt"), None), 300, "epoch 1")
    finally:
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait()
    run_dir = checkpoint.parents[1]
    killed = json.loads((run_dir / "state.json").read_text())
    assert killed["status"] == "running" and not (run_dir / "summary.json").exists()
    killed_at = torch.load(checkpoint, weights_only=True)["epoch"]
    assert killed_at < 25

    rerun = subprocess.run(_run_command(source, workdir), env=_env(tmp_path), cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-4000:]
    assert f"resuming the interrupted run in {run_dir}" in log
    assert f"flow run {killed['flow_run_id']} marked Crashed" in log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert json.loads((run_dir / "state.json").read_text())["status"] == "completed"
    assert len(list((workdir / "runs").iterdir())) == 1, "the rerun continued the same run directory"

    uri = f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert [str(v.version) for v in client.search_model_versions("name='killed'")] == ["1"]
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.info.status != "RUNNING" for r in runs)

    # The resumed model is the one an uninterrupted run trains.
    straight = subprocess.run(_run_command(source, tmp_path / "straight"), env=_env(tmp_path), cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stdout[-3000:]
    other = json.loads(next((tmp_path / "straight" / "runs").glob("*/summary.json")).read_text())
    weights = lambda s: (Path(s["model_dir"]) / "model.safetensors").read_bytes()  # noqa: E731
    assert weights(summary) == weights(other)
