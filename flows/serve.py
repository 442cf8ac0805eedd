"""Serve the pipeline's deployments from this process (no work pool needed):

    python -m flows.serve [--timezone Europe/Berlin]   # PREFECT_API_URL pointing at `prefect server start`

The same deployments as infra/prefect.yaml: a nightly MovieLens-1M retrain, an on-demand
training run, batch recommendation and the hyperparameter search; trigger them from the UI's Run button or with
`prefect deployment run 'training_pipeline/on-demand' --param ...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from prefect import serve
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.schedules import CronSchedule

from flows.batch import batch_recommend
from flows.training import training_pipeline
from flows.tuning import hyperparameter_search

NIGHTLY_MODEL = "gru4rec-ml1m"  # trained by the nightly deployment, served by batch-recommend
PREFECT_FILE = Path(__file__).resolve().parents[1] / "infra" / "prefect.yaml"


def nightly_schedule(timezone: str | None = None) -> DeploymentScheduleCreate:
    """The nightly schedule as infra/prefect.yaml declares it (one place for cron, timezone, slug).

    `active` is left unset, as in the file: restarting `serve` keeps a paused schedule paused."""
    spec = yaml.safe_load(PREFECT_FILE.read_text(encoding="utf-8"))
    (declared,) = next(d for d in spec["deployments"] if d["name"] == "nightly-ml1m")["schedules"]
    cron = CronSchedule(cron=declared["cron"], timezone=timezone or declared.get("timezone") or "UTC")
    return DeploymentScheduleCreate(schedule=cron, slug=declared["slug"])


def deployments(timezone: str | None = None):
    nightly = training_pipeline.to_deployment(
        name="nightly-ml1m",
        schedules=[nightly_schedule(timezone)],
        tags=["gru4rec", "nightly"],
        parameters={"config": {"training": {"preset": "gru4rec-xe"}, "registry": {"name": NIGHTLY_MODEL}}},
    )
    on_demand = training_pipeline.to_deployment(name="on-demand", tags=["gru4rec", "manual"])
    batch = batch_recommend.to_deployment(
        name="batch-recommend", tags=["gru4rec", "inference"], parameters={"model_name": NIGHTLY_MODEL}
    )
    tune = hyperparameter_search.to_deployment(name="tune", tags=["gru4rec", "tuning"])
    return [nightly, on_demand, batch, tune]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve the gru4rec deployments from this process.")
    parser.add_argument("--timezone", help="IANA timezone of the nightly schedule (default: infra/prefect.yaml's)")
    serve(*deployments(parser.parse_args().timezone))
