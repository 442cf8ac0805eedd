"""Prefect tasks of the model half: train, evaluate, register. Thin wrappers over gru4rec.jobs
and tasks.registry; they pass paths and small JSON summaries, never models or DataFrames."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import RETRY_OPTIONS


def _token(context, parameters) -> str:
    # Cached only when the flow passes a token (cache_training); otherwise unique per task run.
    return parameters["cache_token"] or f"nocache-{context.task_run.id}"


def _retry_training(task, task_run, state) -> bool:
    # Training is retried on transient failures (I/O, a lost worker); a retry resumes from the
    # last epoch's checkpoint, so it costs at most one epoch.
    from tasks.common import retry_transient_only

    return retry_transient_only(task, task_run, state)


@task(
    name="train",
    retries=2,
    retry_delay_seconds=RETRY_OPTIONS["retry_delay_seconds"],
    retry_jitter_factor=RETRY_OPTIONS["retry_jitter_factor"],
    retry_condition_fn=_retry_training,
    cache_key_fn=_token,
    persist_result=True,
)
def train_task(split_dir: str, config_json: str, model_dir: str, full: bool, preset: str, cache_token: str) -> dict:
    """Train (resuming from model_dir's checkpoint if a previous attempt was interrupted)."""
    from gru4rec.config import Gru4RecConfig
    from gru4rec.jobs import train_step

    cfg = Gru4RecConfig.model_validate_json(config_json)
    summary = train_step(split_dir, cfg, model_dir, full=full, preset=preset, resume=True)
    return {k: v for k, v in summary.items()}


@task(name="evaluate", **RETRY_OPTIONS, cache_policy=NO_CACHE)
def evaluate_task(split_dir: str, model_dir: str, ks: list[int], ties: str, baselines: list[str], out: str) -> dict:
    from gru4rec.jobs import evaluate_step

    return evaluate_step(split_dir, model_dir, ks=tuple(ks), ties=ties, baselines=tuple(baselines), out=out)


@task(name="register", **RETRY_OPTIONS, cache_policy=NO_CACHE)
def register_task(
    model_dir: str,
    metrics: dict,
    config: dict,
    split_fingerprint: str,
    data_manifest_hash: str,
    registry: dict,
    tracking_uri: str,
    artifact_location: str | None,
    tags: dict,
    extra_artifacts: list[str],
    run_name: str,
) -> dict:
    from tasks.registry import log_and_register

    result = log_and_register(
        model_dir,
        metrics=metrics,
        config=config,
        split_fingerprint=split_fingerprint,
        data_manifest_hash=data_manifest_hash,
        registry_name=registry["name"],
        primary_metric=registry["primary_metric"],
        tracking_uri=tracking_uri,
        artifact_location=artifact_location,
        experiment=registry["experiment"],
        tags=tags,
        extra_artifacts=[p for p in extra_artifacts if Path(p).exists()],
        run_name=run_name,
    )
    return result.to_dict()
