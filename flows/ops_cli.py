"""Operations commands of `gru4rec-pipeline`: deploy, the nightly schedule, notifications.

    gru4rec-pipeline deploy [--timezone Europe/Berlin] [--cron "0 2 * * *"]
    gru4rec-pipeline schedule status|pause|resume [--deployment training_pipeline/nightly-ml1m]
    gru4rec-pipeline notify test --notify-url URL | --notify-block TYPE/NAME

`deploy` runs `prefect deploy --all` on infra/prefect.yaml and keeps what an operator paused
paused: a schedule paused in the UI or with `schedule pause` (Prefect itself keeps it: the
schedule has a slug and no `active:` key) and a deployment paused with the UI's deployment toggle
(Prefect 3.9 turns that one back on; `deploy` pauses it again and says so). All of them talk to the
Prefect server named by PREFECT_API_URL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

DEFAULT_PREFECT_FILE = Path("infra/prefect.yaml")
NIGHTLY = "training_pipeline/nightly-ml1m"
SCHEDULE_NOTE = "Schedule:"  # the sentence of a deployment's description that states its schedule

console = Console()
err_console = Console(stderr=True)

schedule_app = typer.Typer(
    help="Pause, resume or show the nightly schedule (on the server at PREFECT_API_URL).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
notify_app = typer.Typer(
    help="Notifications of failed runs and new champions.", no_args_is_help=True, rich_markup_mode=None
)

DeploymentOption = Annotated[str, typer.Option("--deployment", help="FLOW/DEPLOYMENT whose schedules to manage.")]


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _api_url(what: str = "schedules and deployments live") -> str:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value()
    if not url:
        _fail(
            f"{what} on a Prefect server: start one (`prefect server start`) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    return url


def _server_or_temporary() -> None:
    """A real server (PREFECT_API_URL), or the CLI's temporary one started as `run` starts it."""
    from flows.cli import EPHEMERAL_STARTUP_TIMEOUT, _prefect_env, _start_temporary_server

    _prefect_env()
    if os.environ.get("PREFECT_API_URL") or not sys.platform.startswith("linux"):
        return
    try:
        _start_temporary_server()
    except RuntimeError as e:
        _fail(
            f"the temporary Prefect server did not start ({str(e)[:200]}): raise {EPHEMERAL_STARTUP_TIMEOUT}, or "
            "start `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api"
        )


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _read_deployment(client, name: str):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        _fail(f"no deployment {name} on {_api_url()}: run `gru4rec-pipeline deploy` first")
    except Exception as e:  # server down, wrong URL
        _fail(f"cannot reach the Prefect server at {_api_url()}: {type(e).__name__}: {e}")


def _describe_schedule(schedule: Any) -> tuple[str, str]:
    """(recurrence, timezone) of a deployment schedule's schedule."""
    for attr in ("cron", "rrule"):
        if getattr(schedule, attr, None):
            return f"{attr} {getattr(schedule, attr)}", getattr(schedule, "timezone", None) or "UTC"
    interval = getattr(schedule, "interval", None)
    return (f"every {interval}" if interval else str(schedule)), getattr(schedule, "timezone", None) or "UTC"


def _next_runs(client, deployment_id) -> list:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=3,
    )


def schedule_state(name: str = NIGHTLY) -> dict:
    """{"paused": deployment paused?, "schedules": [{id, slug, schedule, timezone, active}]} from the server."""
    with _client() as client:
        d = _read_deployment(client, name)
        return {
            "id": str(d.id),
            "paused": bool(d.paused),
            "schedules": [
                {"id": str(s.id), "slug": s.slug, "schedule": what, "timezone": tz, "active": s.active}
                for s in d.schedules
                for what, tz in [_describe_schedule(s.schedule)]
            ],
        }


@schedule_app.command("status")
def schedule_status(deployment: DeploymentOption = NIGHTLY) -> None:
    """Show whether the deployment and each of its schedules is active, in which timezone, and the next runs."""
    _api_url()
    with _client() as client:
        d = _read_deployment(client, deployment)
        upcoming = _next_runs(client, d.id)
    table = Table(title=f"{deployment}: deployment {'PAUSED' if d.paused else 'active'}")
    for col in ("schedule", "timezone", "slug", "state"):
        table.add_column(col)
    for s in d.schedules:
        what, tz = _describe_schedule(s.schedule)
        table.add_row(what, tz, s.slug or "-", "active" if s.active else "PAUSED")
    console.print(table)
    if not d.schedules:
        console.print("no schedules: runs start only by hand (UI Run button, `prefect deployment run`)")
    for run in upcoming:
        console.print(f"next run: {run.name} at {run.expected_start_time:%Y-%m-%d %H:%M %Z}", highlight=False)
    if not upcoming:
        active = not d.paused and any(s.active for s in d.schedules)
        console.print(
            "no run scheduled yet (the server's scheduler adds the next runs within a minute or so)"
            if active
            else "no run scheduled",
            highlight=False,
        )


@schedule_app.command("pause")
def schedule_pause(deployment: DeploymentOption = NIGHTLY) -> None:
    """Pause every schedule of the deployment (like its toggle in the UI); `deploy` keeps it paused."""
    _api_url()
    with _client() as client:
        d = _read_deployment(client, deployment)
        for s in d.schedules:
            if s.active:
                client.update_deployment_schedule(d.id, s.id, active=False)
    console.print(
        f"paused {len(d.schedules)} schedule(s) of {deployment}; resume with `gru4rec-pipeline schedule resume`"
    )


@schedule_app.command("resume")
def schedule_resume(deployment: DeploymentOption = NIGHTLY) -> None:
    """Resume every schedule of the deployment, and the deployment itself if it was paused in the UI."""
    _api_url()
    with _client() as client:
        d = _read_deployment(client, deployment)
        if d.paused:
            client.resume_deployment(d.id)
        for s in d.schedules:
            if not s.active:
                client.update_deployment_schedule(d.id, s.id, active=True)
    console.print(f"resumed {deployment} ({len(d.schedules)} schedule(s))")


# ---------------------------------------------------------------------------------------------- deploy


def _check_timezone(timezone: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        _fail(f"unknown timezone {timezone!r}: use an IANA name such as UTC, Europe/Berlin, America/New_York")
    return timezone


def _schedule_sentence(schedule: dict) -> str:
    return f"{SCHEDULE_NOTE} cron {schedule['cron']} in {schedule.get('timezone') or 'UTC'}."


def apply_schedule_options(spec: dict, timezone: str | None, cron: str | None) -> list[str]:
    """Set the timezone/cron of every scheduled deployment in a prefect.yaml spec; state it in its
    description. Returns the names of the deployments changed."""
    changed = []
    for dep in spec.get("deployments", []):
        schedules = dep.get("schedules") or []
        for schedule in schedules:
            if timezone:
                schedule["timezone"] = timezone
            if cron:
                if "cron" not in schedule:
                    _fail(f"--cron: deployment {dep['name']} has a non-cron schedule")
                schedule["cron"] = cron
        if schedules and (timezone or cron):
            changed.append(dep["name"])
            description = (dep.get("description") or "").split(SCHEDULE_NOTE)[0].rstrip()
            dep["description"] = f"{description} {_schedule_sentence(schedules[0])}".strip()
    return changed


def _prefect_executable() -> str:
    beside = Path(sys.executable).with_name("prefect")
    return str(beside) if beside.exists() else (shutil.which("prefect") or "prefect")


def _snapshot(client, names: set[str]) -> dict[str, dict]:
    """Paused state of the deployments named (deployment names as in prefect.yaml) that exist."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    found = client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=list(names))))
    return {
        str(d.id): {
            "name": d.name,
            "paused": bool(d.paused),
            "inactive": {s.slug or str(s.schedule) for s in d.schedules if not s.active},
        }
        for d in found
    }


def _ensure_work_pools(client, spec: dict) -> None:
    """Create the (process) work pools the deployments name, if the server has none of that name."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    for pool in {(dep.get("work_pool") or {}).get("name") for dep in spec.get("deployments", [])} - {None}:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            console.print(f"created work pool {pool} (type process)", highlight=False)


def _restore(client, before: dict[str, dict]) -> list[str]:
    """Pause again what was paused before the deploy and is active now. Returns what was restored."""
    restored = []
    for deployment_id, was in before.items():
        d = client.read_deployment(deployment_id)
        if was["paused"] and not d.paused:
            client.pause_deployment(d.id)
            restored.append(f"deployment {d.name} paused again")
        for s in d.schedules:
            if s.active and (s.slug or str(s.schedule)) in was["inactive"]:
                client.update_deployment_schedule(d.id, s.id, active=False)
                restored.append(f"schedule {s.slug or _describe_schedule(s.schedule)[0]} of {d.name} paused again")
    return restored


def deploy(
    prefect_file: Annotated[Path, typer.Option(help="The deployments to create or update.")] = DEFAULT_PREFECT_FILE,
    timezone: Annotated[
        str | None,
        typer.Option(help="IANA timezone of the schedules (e.g. Europe/Berlin); default: as in the file (UTC)."),
    ] = None,
    cron: Annotated[
        str | None, typer.Option(help='Cron of the nightly schedule; default: as in the file ("0 2 * * *").')
    ] = None,
) -> None:
    """`prefect deploy --all` that keeps paused schedules and paused deployments paused.

    Run it from the repository root (Prefect records that directory as the runs' working directory).
    """
    _api_url()
    try:
        spec = yaml.safe_load(prefect_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        _fail(f"cannot read {prefect_file}: {e}")
    if timezone:
        _check_timezone(timezone)
    apply_schedule_options(spec, timezone, cron)
    names = {dep["name"] for dep in spec.get("deployments", [])}
    with _client() as client:
        try:
            before = _snapshot(client, names)
            _ensure_work_pools(client, spec)
        except Exception as e:
            _fail(f"cannot reach the Prefect server at {_api_url()}: {type(e).__name__}: {e}")
    with tempfile.TemporaryDirectory(prefix="gru4rec-deploy-") as tmp:
        rendered = Path(tmp) / "prefect.yaml"
        rendered.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        done = subprocess.run(  # noqa: S603 - Prefect's own CLI from this environment
            [_prefect_executable(), "--no-prompt", "deploy", "--all", "--prefect-file", str(rendered)],
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        err_console.print(done.stdout[-3000:] + done.stderr[-3000:], highlight=False, markup=False)
        _fail(f"prefect deploy failed (exit {done.returncode})")
    with _client() as client:
        restored = _restore(client, before)
    for line in restored:
        console.print(f"kept paused: {line}", highlight=False)
    for dep in spec.get("deployments", []):
        for schedule in dep.get("schedules") or []:
            console.print(f"deployed {dep['name']}: {_schedule_sentence(schedule)}", highlight=False)
    console.print(f"deployed {len(names)} deployment(s) from {prefect_file}", highlight=False)


# ---------------------------------------------------------------------------------------------- notify


@notify_app.command("test")
def notify_test(
    notify_url: Annotated[str | None, typer.Option(help="URL to POST a JSON test message to.")] = None,
    notify_block: Annotated[str | None, typer.Option(help="Prefect block TYPE-SLUG/NAME to notify through.")] = None,
) -> None:
    """Send a test message the way a run would (a new champion); exit 1 when it was not delivered."""
    from pydantic import ValidationError

    from flows.config import NotificationSettings
    from gru4rec.errors import validation_errors_text
    from tasks.notify import notify_new_champion

    try:
        settings = NotificationSettings(notify_url=notify_url, notify_block=notify_block)
    except ValidationError as e:
        _fail(f"invalid settings: {validation_errors_text(e)}")
    if not (notify_url or notify_block):
        _fail("give --notify-url or --notify-block")
    _server_or_temporary()
    ok = notify_new_champion(
        "gru4rec-test", 0, {"mrr@20": 0.0}, None, "test message from `gru4rec-pipeline notify test`", settings=settings
    )
    if not ok:
        err_console.print("not delivered (see the warning above)")
        raise typer.Exit(code=1)
    console.print("delivered")


@notify_app.command("setup")
def notify_setup(
    url: Annotated[str, typer.Option(help="Webhook URL the notifications are POSTed to (JSON subject/body/text).")],
    block_name: Annotated[
        str, typer.Option(help="Name of the Custom Webhook block to save.")
    ] = "gru4rec-notifications",
    automations: Annotated[
        bool,
        typer.Option(help="Also create server automations (failed run, new champion) that notify through the block."),
    ] = False,
) -> None:
    """Save a Custom Webhook notification block (and, with --automations, the server automations)."""
    from pydantic import ValidationError

    from flows.config import NotificationSettings
    from tasks.notify import create_automations, save_webhook_block

    try:
        NotificationSettings(notify_url=url)
    except ValidationError as e:
        _fail(str(e.errors()[0]["msg"]).removeprefix("Value error, "))
    if automations:  # the CLI's temporary server runs no triggers service
        _api_url("automations run")
    _server_or_temporary()
    block_id = save_webhook_block(url, block_name)
    console.print(f"saved block custom-webhook/{block_name}", highlight=False)
    if automations:
        for name in create_automations(block_id):
            console.print(f"created automation {name!r}", highlight=False)
        console.print("runs need no notify_block now (it would send each message twice)", highlight=False)
    else:
        console.print(
            f"runs notify through it with --notify-block custom-webhook/{block_name} "
            f'(or "notifications": {{"notify_block": "custom-webhook/{block_name}"}} in their config)',
            highlight=False,
        )


# ---------------------------------------------------------------------------------------------- mlflow ui

TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def mlflow_ui_command(store: Path, host: str, port: int) -> list[str]:
    mlflow = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow) if mlflow.exists() else "mlflow", "ui",
        "--backend-store-uri", f"sqlite:///{store.resolve()}",
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def mlflow_ui(
    workdir: Annotated[Path, typer.Option(help="Workdir of the embedded MLflow store (runs/mlflow/mlflow.db).")] = Path(
        "runs"
    ),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the model registry in a browser once up.")] = False,
) -> None:
    """The MLflow UI on the embedded store, telemetry off, at the model registry (#/models)."""
    store = workdir / "mlflow" / "mlflow.db"
    if not store.is_file():
        _fail(f"no MLflow store at {store}: run `gru4rec-pipeline run` first, or pass --workdir")
    url = f"http://{host}:{port}/#/models"
    console.print(f"MLflow model registry: {url}  (telemetry off; Ctrl-C stops it)", highlight=False)
    if open_browser:
        import threading
        import urllib.request
        import webbrowser

        def _open_when_up() -> None:
            for _ in range(600):
                try:
                    with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2):  # noqa: S310
                        webbrowser.open(url)
                        return
                except OSError:
                    threading.Event().wait(0.5)

        threading.Thread(target=_open_when_up, daemon=True).start()
    try:
        done = subprocess.run(mlflow_ui_command(store, host, port), env={**os.environ, **TELEMETRY_OFF})  # noqa: S603
    except KeyboardInterrupt:
        return
    raise typer.Exit(code=done.returncode)


def register(app: typer.Typer) -> None:
    """Add the operations commands to the `gru4rec-pipeline` app."""
    app.command("deploy")(deploy)
    app.command("mlflow-ui")(mlflow_ui)
    app.add_typer(schedule_app, name="schedule")
    app.add_typer(notify_app, name="notify")
