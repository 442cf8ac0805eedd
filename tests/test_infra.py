"""The deployment definitions point at real flows with parameters those flows accept."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from flows.config import PipelineConfig, TuningConfig

REPO = Path(__file__).resolve().parents[1]


def test_prefect_yaml_deployments_are_valid():
    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert {"nightly-ml1m", "on-demand", "batch-recommend"} <= names
    for dep in spec["deployments"]:
        module_path, func = dep["entrypoint"].split(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        params = dep.get("parameters", {})
        assert set(params) <= set(flow.parameters.properties), dep["name"]
        if "config" in params:  # raises on a bad setting
            (TuningConfig if func == "hyperparameter_search" else PipelineConfig).model_validate(params["config"])
        assert dep["work_pool"]["name"] == "gru4rec-process"
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly-ml1m")
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"


def test_served_deployments_build():
    from flows.serve import deployments

    deps = deployments()
    assert [d.name for d in deps] == ["nightly-ml1m", "on-demand", "batch-recommend", "tune"]
    assert deps[0].schedules and deps[0].schedules[0].schedule.cron == "0 2 * * *"


def test_serving_deployments_read_a_model_that_a_deployment_trains():
    from flows.serve import deployments

    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    trained = {
        PipelineConfig.model_validate(d["parameters"]["config"]).registry.name
        for d in spec["deployments"]
        if "config" in d.get("parameters", {}) and d["entrypoint"].startswith("flows/training.py")
    }
    served = [d["parameters"]["model_name"] for d in spec["deployments"] if "model_name" in d.get("parameters", {})]
    assert served and set(served) <= trained
    by_name = {d.name: d for d in deployments()}
    assert (
        by_name["batch-recommend"].parameters["model_name"]
        == (by_name["nightly-ml1m"].parameters["config"]["registry"]["name"])
    )


# ------------------------------------------------------------------ a real server: pause survives redeploy


@pytest.fixture(scope="module")
def deploy_server(tmp_path_factory):
    from tests.prefect_server import running_prefect_server

    with running_prefect_server(tmp_path_factory.mktemp("prefect-home")) as env:
        yield env


def _state(env: dict) -> dict:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.ops_cli import schedule_state

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return schedule_state("training_pipeline/nightly-ml1m")


def _ok(done) -> str:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_the_nightly_schedule_is_keyed_by_slug_without_active():
    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    (schedule,) = next(d for d in spec["deployments"] if d["name"] == "nightly-ml1m")["schedules"]
    assert schedule["slug"] == "nightly" and schedule["timezone"] == "UTC"
    assert "active" not in schedule  # `active: true` switches a paused schedule back on at every deploy


def test_a_paused_schedule_stays_paused_when_redeployed(deploy_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.prefect_server import run_cli

    env = deploy_server
    out = _ok(run_cli(env, "gru4rec-pipeline", "deploy"))
    assert "cron 0 2 * * * in UTC" in out
    state = _state(env)
    assert not state["paused"]
    assert [(s["slug"], s["schedule"], s["timezone"], s["active"]) for s in state["schedules"]] == [
        ("nightly", "cron 0 2 * * *", "UTC", True)
    ]

    _ok(run_cli(env, "gru4rec-pipeline", "schedule", "pause"))
    assert [s["active"] for s in _state(env)["schedules"]] == [False]

    # Prefect's own redeploy keeps the paused schedule paused (slug, no `active:` in the file) ...
    _ok(run_cli(env, "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect.yaml"))
    assert [s["active"] for s in _state(env)["schedules"]] == [False]

    # ... and our deploy also keeps a deployment paused with the UI's deployment toggle, while it
    # changes the timezone
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            client.pause_deployment(state["id"])
    out = _ok(run_cli(env, "gru4rec-pipeline", "deploy", "--timezone", "Europe/Berlin"))
    assert "deployment nightly-ml1m paused again" in out
    state = _state(env)
    assert state["paused"]
    assert [(s["timezone"], s["active"]) for s in state["schedules"]] == [("Europe/Berlin", False)]
    status = _ok(run_cli(env, "gru4rec-pipeline", "schedule", "status"))
    assert "PAUSED" in status and "Europe/Berlin" in status

    _ok(run_cli(env, "gru4rec-pipeline", "schedule", "resume"))
    _ok(run_cli(env, "gru4rec-pipeline", "deploy"))  # an active schedule stays active
    state = _state(env)
    assert not state["paused"]
    assert [(s["timezone"], s["active"]) for s in state["schedules"]] == [("UTC", True)]


def test_deploy_refuses_an_unknown_timezone_before_deploying(deploy_server):
    from tests.prefect_server import run_cli

    done = run_cli(deploy_server, "gru4rec-pipeline", "deploy", "--timezone", "Mars/Olympus")
    assert done.returncode == 2 and "unknown timezone 'Mars/Olympus'" in done.stderr


def test_schedule_commands_need_a_server():
    import os

    from tests.prefect_server import run_cli

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    done = run_cli(env, "gru4rec-pipeline", "schedule", "status")
    assert done.returncode == 2 and "PREFECT_API_URL" in done.stderr


def test_restarting_serve_keeps_a_paused_schedule_paused(deploy_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.serve import deployments

    def served(timezone=None):
        nightly = deployments(timezone)[0]
        nightly.name = "served-nightly"  # what `python -m flows.serve` applies at each start
        nightly.apply()
        with get_client(sync_client=True) as client:
            return client.read_deployment_by_name("training_pipeline/served-nightly")

    with temporary_settings(updates={PREFECT_API_URL: deploy_server["PREFECT_API_URL"]}):
        d = served()
        assert [(s.slug, s.active, s.schedule.timezone) for s in d.schedules] == [("nightly", True, "UTC")]
        with get_client(sync_client=True) as client:
            client.update_deployment_schedule(d.id, d.schedules[0].id, active=False)
        d = served("Europe/Berlin")
        assert [(s.slug, s.active, s.schedule.timezone) for s in d.schedules] == [("nightly", False, "Europe/Berlin")]


def test_mlflow_ui_opens_on_the_registry_with_telemetry_off(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    import mlflow

    from tests.prefect_server import _free_port

    store = tmp_path / "mlflow" / "mlflow.db"
    store.parent.mkdir()
    uri = f"sqlite:///{store}"  # registry too: an earlier test may have set a global registry URI
    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).create_registered_model("gru4rec-ml1m")
    port = _free_port()
    cli = str(Path(sys.executable).with_name("gru4rec-pipeline"))
    # MLflow exports MLFLOW_TRACKING_URI when an earlier test in this process set one: not this store
    dropped = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    ui = subprocess.Popen(  # noqa: S603
        [cli, "mlflow-ui", "--workdir", str(tmp_path), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2):  # noqa: S310
                    break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
                time.sleep(1)
        request = urllib.request.Request(
            base + "/ajax-api/2.0/mlflow/registered-models/search", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310
            assert [m["name"] for m in json.load(r)["registered_models"]] == ["gru4rec-ml1m"]
        with urllib.request.urlopen(base + "/ajax-api/3.0/mlflow/ui-telemetry", timeout=10) as r:  # noqa: S310
            assert json.load(r)["disable_ui_telemetry"] is True
        # the server process itself runs with telemetry switched off
        children = [
            p for p in Path("/proc").glob("[0-9]*")
            if (p / "stat").exists() and (p / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(ui.pid)
        ]  # fmt: skip
        assert children
        environ = (children[0] / "environ").read_bytes().split(b"\0")
        assert b"MLFLOW_DISABLE_TELEMETRY=true" in environ and b"DO_NOT_TRACK=true" in environ
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        out = ui.communicate(timeout=60)[0]
    assert f"MLflow model registry: http://127.0.0.1:{port}/#/models" in out
