"""Telling people: a failed run or a new champion, sent through Prefect's own mechanisms.

Two ways, both documented in the README ("Operations → Notifications"):

* **From the run** (works everywhere: the CLI's temporary server, a real server + worker, `serve`):
  the flows' failure hook (:func:`notify_failure`) and the registration step
  (:func:`notify_new_champion`) send through a Prefect notification block named in
  ``config.notifications.notify_block`` (any ``NotificationBlock`` — Custom Webhook, Slack, … — or a
  ``Webhook`` block) and/or POST JSON to ``notify_url`` with Prefect's ``Webhook`` block.
* **From the server** (a real ``prefect server start``, whose triggers service runs automations):
  every new champion is also a Prefect event ``gru4rec.model.champion`` and every failed flow run
  is Prefect's own ``prefect.flow-run.Failed``; ``gru4rec-pipeline notify setup --automations``
  creates automations that answer both with a ``SendNotification`` action. (The CLI's temporary
  server runs no triggers service and lives only as long as the command, so automations never fire
  there: use the first way for CLI runs.)

A notification that cannot be sent never fails or slows down a run beyond its timeout: it is a
warning in the run's log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.common import readable

CHAMPION_EVENT = "gru4rec.model.champion"
FAILURE_EVENTS = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed")
PIPELINE_FLOWS = ("training_pipeline", "prepare_data")
TIMEOUT_S = 10.0

_fallback_logger = logging.getLogger("gru4rec.notify")


class NotificationSettings(BaseModel):
    """Who hears about a failed run or a new champion (tasks/notify.py; README "Notifications")."""

    model_config = ConfigDict(extra="forbid")

    notify_block: str | None = Field(
        default=None,
        description="Prefect block to notify through, as TYPE-SLUG/NAME: a notification block "
        "(custom-webhook/NAME, slack-webhook/NAME, ...) or a webhook block (webhook/NAME); None = none.",
    )
    notify_url: str | None = Field(
        default=None, description="URL to POST a JSON message to (Prefect's Webhook block, unsaved); None = none."
    )
    notify_on_failure: bool = Field(default=True, description="Notify when a run fails or crashes.")
    notify_on_new_champion: bool = Field(default=True, description="Notify when a new version becomes champion.")

    @field_validator("notify_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"notify_url must start with http:// or https://, got {v!r}")
        return v

    @field_validator("notify_block")
    @classmethod
    def _block_name(cls, v: str | None) -> str | None:
        if v is not None and v.count("/") != 1:
            raise ValueError(f"notify_block must be TYPE-SLUG/NAME (e.g. custom-webhook/gru4rec), got {v!r}")
        return v


def _logger(flow=None, flow_run=None):
    """The run's logger (its lines show in the UI), or a plain one outside a run."""
    try:
        if flow_run is not None:
            from prefect.logging.loggers import flow_run_logger

            return flow_run_logger(flow_run, flow)
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # no run context
        return _fallback_logger


def _redacted(url: str) -> str:
    """scheme://host[:port] only: a webhook URL often carries its secret in the path."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…" if parts.netloc else "<url>"


def resolve_settings(settings: Any = None, parameters: Mapping[str, Any] | None = None):
    """`NotificationSettings` from an explicit value, or from a flow run's ``config`` parameter."""
    if isinstance(settings, NotificationSettings):
        return settings
    if isinstance(settings, Mapping):
        return NotificationSettings.model_validate(dict(settings))
    if parameters is None:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        parameters = (ctx.parameters if ctx else None) or {}
    config = parameters.get("config")
    if config is None:
        return NotificationSettings()
    section = getattr(config, "notifications", None)
    if section is None and isinstance(config, Mapping):
        section = config.get("notifications") or {}
    return section if isinstance(section, NotificationSettings) else NotificationSettings.model_validate(section or {})


def _send_to_block(name: str, subject: str, body: str, payload: dict) -> None:
    from prefect.blocks.core import Block
    from prefect.blocks.notifications import NotificationBlock
    from prefect.blocks.webhook import Webhook
    from prefect.utilities.asyncutils import run_coro_as_sync

    block = Block.load(name)
    if isinstance(block, NotificationBlock):
        block.notify(body=body, subject=subject)
    elif isinstance(block, Webhook):
        run_coro_as_sync(block.call(payload)).raise_for_status()
    else:
        raise TypeError(f"block {name} is a {type(block).__name__}, not a notification or webhook block")


def _send_to_url(url: str, payload: dict) -> None:
    from prefect.blocks.webhook import Webhook
    from prefect.utilities.asyncutils import run_coro_as_sync

    webhook = Webhook(url=url)  # Prefect's webhook block, unsaved: POST the payload as JSON
    webhook._client.timeout = TIMEOUT_S  # noqa: SLF001 - the block exposes no timeout field
    run_coro_as_sync(webhook.call(payload)).raise_for_status()


def deliver(settings, subject: str, body: str, payload: dict, logger=None) -> bool:
    """Send one notification to every configured target. Never raises: a failure is a warning.

    Returns True when every target took it (False also when none is configured).
    """
    logger = logger or _logger()
    targets = [("block", settings.notify_block)] if settings.notify_block else []
    targets += [("url", settings.notify_url)] if settings.notify_url else []
    delivered = bool(targets)
    for kind, target in targets:
        shown = f"block {target}" if kind == "block" else f"webhook {_redacted(target)}"
        try:
            if kind == "block":
                _send_to_block(target, subject, body, payload)
            else:
                _send_to_url(target, payload)
            logger.info("notification sent to %s: %s", shown, subject)
        except Exception as e:  # any failure: the run goes on
            delivered = False
            text = str(e).replace(target, _redacted(target)) if kind == "url" else str(e)
            logger.warning("notification to %s failed (the run is not affected): %s: %s", shown, type(e).__name__, text)
    return delivered


def _payload(event: str, subject: str, body: str, **fields: Any) -> dict:
    # "text" makes the same JSON readable by chat webhooks (Slack, Mattermost) as it is.
    return {"event": event, "subject": subject, "body": body, "text": f"{subject}\n{body}", **fields}


def _ui_link(flow_run_id: Any) -> str | None:
    try:
        from prefect.settings import PREFECT_UI_URL

        ui = PREFECT_UI_URL.value()
    except Exception:
        return None
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui and flow_run_id else None


def _current_flow_run() -> dict:
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        if ctx and ctx.flow_run:
            return {"id": str(ctx.flow_run.id), "name": ctx.flow_run.name, "url": _ui_link(ctx.flow_run.id)}
    except Exception:
        pass
    return {}


def _describe(values: Mapping[str, Any] | Any) -> str:
    if isinstance(values, Mapping):
        return ", ".join(f"{k} {readable(v)}" for k, v in values.items())
    return readable(values)


def notify_new_champion(
    registry_name: str,
    version: str | int,
    metric: Mapping[str, float],
    previous: Mapping[str, Any] | None,
    reason: str,
    *,
    settings: Any = None,
) -> bool:
    """Tell people that ``registry_name`` version ``version`` became the champion. Never raises.

    ``metric``: the new champion's score(s), e.g. ``{"mrr@20": 0.1523}``; ``previous``: the
    champion it replaces, e.g. ``{"version": "3", "mrr@20": 0.1401}`` (its score on the same
    targets), or None for the first champion; ``reason``: the registration decision in words.
    ``settings``: a ``NotificationSettings`` (or dict); None = the current flow run's
    ``config.notifications``. Emits the Prefect event ``gru4rec.model.champion`` (for automations)
    and sends to the configured block/URL. Returns True when a notification was delivered.
    """
    logger = _logger()
    try:
        settings = resolve_settings(settings)
        if not settings.notify_on_new_champion:
            return False
        run = _current_flow_run()
        subject = f"gru4rec: {registry_name} version {version} is the new champion"
        lines = [f"{registry_name} version {version} is now @champion: {_describe(metric)}."]
        lines.append(f"It replaces {_describe(previous)}." if previous else "It is the first champion of this model.")
        lines.append(f"Decision: {reason}")
        if run:
            lines.append(f"Flow run: {run['name']}" + (f" ({run['url']})" if run.get("url") else ""))
        body = "\n".join(lines)
        fields = {
            "model": registry_name,
            "version": str(version),
            "metric": dict(metric),
            "previous": dict(previous) if isinstance(previous, Mapping) else previous,
            "reason": reason,
            "flow_run": run or None,
        }
        _emit(CHAMPION_EVENT, registry_name, {"subject": subject, "body": body, **fields}, logger)
        return deliver(settings, subject, body, _payload(CHAMPION_EVENT, subject, body, **fields), logger)
    except Exception as e:  # never fail a registration because of a message
        logger.warning("champion notification not sent (the run is not affected): %s: %s", type(e).__name__, e)
        return False


def _emit(event: str, registry_name: str, payload: dict, logger) -> None:
    try:
        from prefect.events import emit_event

        emit_event(
            event=event,
            resource={"prefect.resource.id": f"gru4rec.model.{registry_name}", "prefect.resource.name": registry_name},
            payload=payload,
        )
    except Exception as e:
        logger.warning("event %s not emitted: %s: %s", event, type(e).__name__, e)


def notify_failure(flow, flow_run, state) -> None:
    """Prefect state hook (``on_failure`` / ``on_crashed``): tell people a pipeline run failed."""
    logger = _logger(flow, flow_run)
    try:
        settings = resolve_settings(parameters=getattr(flow_run, "parameters", None) or {})
        if not settings.notify_on_failure:
            return
        flow_name = getattr(flow, "name", "flow")
        state_name = getattr(state, "name", "Failed")
        message = (getattr(state, "message", None) or "").strip()
        url = _ui_link(flow_run.id)
        subject = f"gru4rec: {flow_name} run {flow_run.name} {state_name}"
        lines = [f"Flow run {flow_run.name} of {flow_name} ended {state_name}."]
        if message:
            lines.append(message)
        if getattr(flow_run, "deployment_id", None):
            lines.append(f"Deployment id: {flow_run.deployment_id}")
        if url:
            lines.append(f"See {url}")
        body = "\n".join(lines)
        run = {"id": str(flow_run.id), "name": flow_run.name, "url": url}
        payload = _payload(
            f"gru4rec.flow-run.{state_name}",
            subject,
            body,
            flow=flow_name,
            state=state_name,
            message=message,
            flow_run=run,
        )
        deliver(settings, subject, body, payload, logger)
    except Exception as e:  # a hook must never change the run's outcome
        logger.warning("failure notification not sent: %s: %s", type(e).__name__, e)


# ------------------------------------------------------------------------- setting it up on a server

DEFAULT_BLOCK_NAME = "gru4rec-notifications"
FAILURE_AUTOMATION = "gru4rec: pipeline run failed"
CHAMPION_AUTOMATION = "gru4rec: new champion"


def save_webhook_block(url: str, name: str = DEFAULT_BLOCK_NAME):
    """Save a Custom Webhook notification block that POSTs {"subject", "body", "text"} as JSON to
    ``url``; returns its block document id (use it as ``notify_block: custom-webhook/<name>``)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name=name,
        url=url,
        json_data={"subject": "{{subject}}", "body": "{{body}}", "text": "{{subject}}\n{{body}}"},
        timeout=TIMEOUT_S,
    )
    return block.save(name, overwrite=True)


def create_automations(block_document_id) -> list[str]:
    """(Re)create the two server automations that notify through the block: a failed or crashed
    run of the pipeline's flows, and the event ``gru4rec.model.champion``. Needs a server whose
    triggers service runs (`prefect server start`). Returns the automations' names."""
    from prefect.automations import Automation, EventTrigger, Posture, SendNotification
    from prefect.client.orchestration import get_client

    failure = Automation(
        name=FAILURE_AUTOMATION,
        description="A run of training_pipeline or prepare_data failed or crashed (created by gru4rec-pipeline).",
        trigger=EventTrigger(
            expect=set(FAILURE_EVENTS),
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(PIPELINE_FLOWS)},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=block_document_id,
                subject="gru4rec: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}",
                body="Flow run {{ flow_run.name }} of {{ flow.name }} ended {{ flow_run.state.name }}.\n"
                "{{ flow_run.state.message }}\nSee {{ flow_run|ui_url }}",
            )
        ],
    )
    champion = Automation(
        name=CHAMPION_AUTOMATION,
        description="A registered version became the champion (event gru4rec.model.champion).",
        trigger=EventTrigger(
            expect={CHAMPION_EVENT},
            match={"prefect.resource.id": "gru4rec.model.*"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=block_document_id,
                subject="{{ event.payload.subject }}",
                body="{{ event.payload.body }}",
            )
        ],
    )
    with get_client(sync_client=True) as client:
        for automation in (failure, champion):
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
    for automation in (failure, champion):
        automation.create()
    return [failure.name, champion.name]
