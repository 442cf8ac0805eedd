"""Notifications reach a real HTTP webhook receiver on 127.0.0.1, and never fail a run."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flows.config import NotificationSettings, PipelineConfig, PrepareConfig


class Receiver:
    """A tiny webhook receiver: records every request; paths starting with /status/NNN answer NNN."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.arrived:
                    receiver.requests.append({"path": self.path, "body": json.loads(body or b"null")})
                    receiver.arrived.notify_all()
                status = int(self.path.split("/")[2]) if self.path.startswith("/status/") else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, count: int = 1, timeout: float = 30.0) -> list[dict]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= count, timeout=timeout)
        return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket is closed


def _flow_run_logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def test_settings_are_a_config_section_with_cli_options():
    from flows.cli import PIPELINE_OPTIONS, PREPARE_OPTIONS

    assert PipelineConfig().notifications == NotificationSettings()
    assert PrepareConfig().notifications == NotificationSettings()
    for options in (PIPELINE_OPTIONS, PREPARE_OPTIONS):
        flags = {o.flag for o in options}
        assert {"notify-block", "notify-url", "notify-on-failure", "notify-on-new-champion"} <= flags
    with pytest.raises(ValueError, match="notify_url"):
        NotificationSettings(notify_url="127.0.0.1:9/hook")
    with pytest.raises(ValueError, match="notify_block"):
        NotificationSettings(notify_block="just-a-name")


def test_new_champion_posts_json_to_a_webhook_url(prefect_harness, receiver):
    from tasks.notify import notify_new_champion

    sent = notify_new_champion(
        "gru4rec-ml1m",
        7,
        {"mrr@20": 0.152345},
        {"version": "6", "mrr@20": 0.140123},
        "beats the champion by 8.7%",
        settings={"notify_url": receiver.url + "/hook/secret-token"},
    )
    assert sent is True
    (request,) = receiver.wait()
    assert request["path"] == "/hook/secret-token"
    msg = request["body"]
    assert msg["event"] == "gru4rec.model.champion"
    assert (msg["model"], msg["version"]) == ("gru4rec-ml1m", "7")
    assert msg["metric"] == {"mrr@20": 0.152345} and msg["previous"]["version"] == "6"
    assert "version 7 is the new champion" in msg["subject"]
    assert "mrr@20 0.1523" in msg["body"] and "beats the champion" in msg["body"]
    assert msg["text"].startswith(msg["subject"])


def test_new_champion_through_a_saved_prefect_notification_block(prefect_harness, receiver):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from tasks.notify import notify_new_champion

    CustomWebhookNotificationBlock(
        name="gru4rec", url=receiver.url + "/block", json_data={"title": "{{subject}}", "message": "{{body}}"}
    ).save("gru4rec-test-notify", overwrite=True)
    sent = notify_new_champion(
        "gru4rec",
        "1",
        {"mrr@20": 0.2},
        None,
        "first version",
        settings=NotificationSettings(notify_block="custom-webhook/gru4rec-test-notify"),
    )
    assert sent is True
    (request,) = receiver.wait()
    assert request["path"] == "/block"
    assert request["body"]["title"] == "gru4rec: gru4rec version 1 is the new champion"
    assert "first champion" in request["body"]["message"]


def test_switched_off_or_unconfigured_sends_nothing(prefect_harness, receiver):
    from tasks.notify import notify_new_champion

    assert notify_new_champion("m", 1, {"mrr@20": 0.1}, None, "r", settings={}) is False
    assert (
        notify_new_champion(
            "m", 1, {"mrr@20": 0.1}, None, "r", settings={"notify_url": receiver.url, "notify_on_new_champion": False}
        )
        is False
    )
    assert receiver.wait(timeout=1) == []


def test_a_failed_prepare_run_notifies_through_its_failure_hook(prefect_harness, receiver, tmp_path):
    from flows.prepare import prepare_data

    cfg = PrepareConfig.model_validate(
        {
            "ingest": {"source": str(tmp_path / "missing.csv")},
            "out_dir": str(tmp_path / "out"),
            "notifications": {"notify_url": receiver.url + "/failed"},
        }
    )
    state = prepare_data(cfg, return_state=True)
    assert state.is_failed()
    (request,) = receiver.wait()
    msg = request["body"]
    assert msg["event"] == "gru4rec.flow-run.Failed" and msg["flow"] == "prepare_data"
    assert "missing.csv" in msg["body"] and msg["flow_run"]["id"] == str(state.state_details.flow_run_id)


def test_a_failed_training_pipeline_run_notifies(prefect_harness, receiver, tmp_path):
    from flows.training import training_pipeline

    cfg = PipelineConfig.model_validate(
        {
            "ingest": {"source": str(tmp_path / "missing.csv")},
            "workdir": str(tmp_path / "runs"),
            "notifications": {"notify_url": receiver.url + "/failed"},
        }
    )
    state = training_pipeline(cfg, return_state=True)
    assert state.is_failed()
    (request,) = receiver.wait()
    assert request["body"]["flow"] == "training_pipeline"
    assert "missing.csv" in request["body"]["body"]


def test_an_unreachable_or_failing_receiver_never_fails_the_run(prefect_harness, receiver):
    from prefect import flow

    from tasks.notify import notify_new_champion

    @flow
    def registers() -> bool:
        return notify_new_champion(
            "m",
            2,
            {"mrr@20": 0.3},
            {"version": "1", "mrr@20": 0.2},
            "better",
            settings={"notify_url": receiver.url + "/status/500"},
        )

    @flow
    def registers_nowhere() -> bool:
        return notify_new_champion(
            "m",
            2,
            {"mrr@20": 0.3},
            None,
            "better",
            settings={"notify_url": f"http://127.0.0.1:{_closed_port()}/hook", "notify_block": "custom-webhook/absent"},
        )

    for fn in (registers, registers_nowhere):
        state = fn(return_state=True)
        assert state.is_completed(), fn.name
        assert state.result() is False
        logs = _flow_run_logs(state.state_details.flow_run_id)
        assert any("notification to webhook http://127.0.0.1:" in m and "failed" in m for m in logs), logs
    assert [r["path"] for r in receiver.requests] == ["/status/500"]
    assert "absent" in " ".join(logs)


def test_a_failing_receiver_leaves_a_failed_run_failed_for_its_own_reason(prefect_harness, receiver, tmp_path):
    from flows.prepare import prepare_data

    cfg = PrepareConfig.model_validate(
        {
            "ingest": {"source": str(tmp_path / "missing.csv")},
            "out_dir": str(tmp_path / "out"),
            "notifications": {"notify_url": receiver.url + "/status/503"},
        }
    )
    state = prepare_data(cfg, return_state=True)
    assert state.is_failed() and "missing.csv" in state.message
    assert len(receiver.wait()) == 1
    logs = _flow_run_logs(state.state_details.flow_run_id)
    assert any("failed (the run is not affected)" in m and "503" in m for m in logs), logs


# ------------------------------------------------------------- automations on a real server (triggers on)


@pytest.fixture(scope="module")
def automation_server(tmp_path_factory):
    import os

    from flows.cli import _prefect_env
    from tests.prefect_server import running_prefect_server

    # As in a full test session: an earlier in-process `prepare`/`run` CLI call has set up this
    # process's environment for a temporary server (triggers off). The real server must not inherit it.
    saved = dict(os.environ)
    os.environ.pop("PREFECT_API_URL", None)
    _prefect_env()
    try:
        with running_prefect_server(tmp_path_factory.mktemp("prefect-home")) as env:
            yield env
    finally:
        os.environ.clear()
        os.environ.update(saved)


CHAMPION_SCRIPT = """
from tasks.notify import notify_new_champion
assert notify_new_champion("gru4rec-ml1m", 3, {"mrr@20": 0.21}, {"version": "2", "mrr@20": 0.19}, "better",
                           settings={}) is False   # nothing sent from the run: the server does it
"""

FAILING_PREPARE_SCRIPT = """
import sys
from flows.config import PrepareConfig
from flows.prepare import prepare_data
state = prepare_data(PrepareConfig(ingest={"source": sys.argv[1]}, out_dir=sys.argv[2]), return_state=True)
assert state.is_failed()
"""


def test_server_automations_notify_a_new_champion_and_a_failed_run(automation_server, receiver, tmp_path):
    """The second way: the runs send nothing, the server's automations (SendNotification through a
    Custom Webhook block) answer the champion event and Prefect's own flow-run Failed event."""
    import subprocess
    import sys

    from tests.prefect_server import REPO, run_cli

    env = automation_server
    done = run_cli(env, "gru4rec-pipeline", "notify", "setup", "--url", receiver.url + "/auto", "--automations")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "created automation 'gru4rec: new champion'" in done.stdout

    script = subprocess.run(
        [sys.executable, "-c", CHAMPION_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert script.returncode == 0, script.stderr[-3000:]
    (request,) = receiver.wait(1, timeout=120)
    assert request["path"] == "/auto"
    assert request["body"]["subject"] == "gru4rec: gru4rec-ml1m version 3 is the new champion"
    assert "It replaces version 2, mrr@20 0.1900" in request["body"]["body"]

    script = subprocess.run(
        [sys.executable, "-c", FAILING_PREPARE_SCRIPT, str(tmp_path / "missing.csv"), str(tmp_path / "out")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert script.returncode == 0, script.stderr[-3000:]
    requests = receiver.wait(2, timeout=120)
    assert len(requests) == 2, requests
    failed = requests[1]["body"]
    assert failed["subject"].startswith("gru4rec: prepare_data run ") and failed["subject"].endswith(" Failed")
    assert "missing.csv" in failed["body"] and "/runs/flow-run/" in failed["body"]
