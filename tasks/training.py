"""Prefect tasks of the model half: train, evaluate, register. Thin wrappers over gru4rec.jobs
and tasks.registry; they pass paths and small JSON summaries, never models or DataFrames."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.caching import ContentKey
from tasks.common import RETRY_OPTIONS, readable


def _training_content(inputs: dict) -> dict:
    # The split by content (its fingerprint covers every file), not by path.
    manifest = json.loads((Path(inputs["split_dir"]) / "manifest.json").read_text(encoding="utf-8"))
    content = {"split": manifest["fingerprint"], "config": json.loads(inputs["config_json"]), "full": inputs["full"]}
    return content | {"exclude_seen": inputs.get("exclude_seen", "auto")}  # the default the model records


# A retry resumes from the last epoch's checkpoint, so it costs at most one epoch.
@task(
    name="train",
    **RETRY_OPTIONS,
    persist_result=True,
    cache_policy=ContentKey(describe=_training_content, modules=("gru4rec",)),
)
def train_task(
    split_dir: str,
    config_json: str,
    model_dir: str,
    full: bool,
    preset: str,
    use_cache: bool = False,
    cache_scope: str = "",
    exclude_seen: str = "auto",
) -> dict:
    """Train (resuming from model_dir's checkpoint if a previous attempt was interrupted); the model
    records ``exclude_seen`` (auto|true|false) resolved on its training data as its default."""
    from gru4rec.config import Gru4RecConfig
    from gru4rec.jobs import train_on_split

    cfg = Gru4RecConfig.model_validate_json(config_json)
    reporter = EpochReporter(cfg.train.epochs)
    summary = train_on_split(
        split_dir,
        cfg,
        model_dir,
        full=full,
        preset=preset,
        resume=True,
        callbacks=[reporter],
        exclude_seen=exclude_seen,
    )
    reporter.finish()
    return summary


class EpochReporter:
    """After each epoch: a log line in the flow run (loss, events/s, validation metrics) and the
    Prefect progress artifact moved on, so the UI shows a training while it runs."""

    def __init__(self, epochs: int):
        from prefect.artifacts import create_progress_artifact

        self.epochs = epochs
        self.logger = get_run_logger()
        self.artifact = create_progress_artifact(
            progress=0.0, key="training-progress", description=f"Training: epochs done of {epochs}"
        )

    def __call__(self, record: dict) -> None:
        from prefect.artifacts import update_progress_artifact

        valid = ", ".join(
            f"{k.removeprefix('valid_')} {readable(v)}"
            for k, v in record.items()
            if k.startswith("valid_") and "@" in k
        )
        self.logger.info(
            "epoch %d/%d: loss %s, %s events/s, %s s%s",
            record["epoch"],
            self.epochs,
            readable(record["loss"]),
            readable(record["events_per_s"]),
            readable(record["seconds"]),
            f"; validation {valid}" if valid else "",
        )
        update_progress_artifact(self.artifact, progress=100.0 * record["epoch"] / self.epochs)

    def finish(self) -> None:  # early stopping (or a finished checkpoint) ends before the last epoch
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self.artifact, progress=100.0)


@task(name="evaluate", **RETRY_OPTIONS, cache_policy=NO_CACHE)
def evaluate_task(
    split_dir: str,
    model_dir: str,
    ks: list[int],
    ties: str,
    baselines: list[str],
    out: str,
    exclude_seen: str = "false",
    compare_seen: bool = False,
) -> dict:
    """Test metrics with ``exclude_seen`` resolved on the training data (and, with ``compare_seen``,
    also with the other setting: `gru4rec.jobs.evaluate_on_split`)."""
    from gru4rec.jobs import evaluate_on_split

    return evaluate_on_split(
        split_dir,
        model_dir,
        ks=tuple(ks),
        ties=ties,
        baselines=tuple(baselines),
        out=out,
        exclude_seen=exclude_seen,
        compare_seen=compare_seen,
    )


# Retried like the others: the registration key makes a retry finish or return the version an
# earlier attempt created instead of registering a second one.
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
    registration_key: str,
    evidence: dict | None = None,
    training_key: str | None = None,
) -> dict:
    from tasks.registry import fail_interrupted_runs, log_and_register

    if tags.get("run_key"):  # a resumed run: what its killed predecessor left RUNNING is marked FAILED
        failed = fail_interrupted_runs(tracking_uri, registry["experiment"], tags["run_key"])
        if failed:
            get_run_logger().warning("MLflow runs of the interrupted run marked FAILED: %s", ", ".join(failed))
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
        registration_key=registration_key,
        evidence=_evidence(evidence),
        training_key=training_key,
    )
    return result.to_dict()


def _evidence(raw: dict | None):
    from tasks.registry import Evidence, HeadToHead

    if raw is None:
        return None
    h2h = raw.get("head_to_head")
    fields = ("champion_version", "value", "unknown_targets", "n_targets", "test_fingerprint")
    return Evidence(
        head_to_head=HeadToHead(**{k: h2h[k] for k in fields}) if h2h else None,
        popularity=raw.get("popularity"),
        baselines=raw.get("baselines"),
        min_gain=raw.get("min_gain", 0.0),
        data_warnings=tuple(raw.get("data_warnings", ())),
        exclude_seen=bool(raw.get("exclude_seen", False)),
    )


@task(name="find-trained-version", **RETRY_OPTIONS, cache_policy=NO_CACHE)
def find_trained_task(tracking_uri: str, registry_name: str, training_key: str) -> dict | None:
    """The registered version already trained with the same split content, settings and code."""
    from tasks.registry import find_trained

    return find_trained(tracking_uri, registry_name, training_key)


@task(name="evaluate-champion", **RETRY_OPTIONS, cache_policy=NO_CACHE)
def evaluate_champion_task(
    split_dir: str,
    split_fingerprint: str,
    registry: dict,
    tracking_uri: str,
    work_dir: str,
    ks: list[int],
    ties: str,
    exclude_seen: bool = False,
) -> dict | None:
    """The current champion on this run's test split, when it was tested on another one (new data) or
    with the other seen-items setting; None when there is no champion or it was tested on this same
    split with the same setting (its recorded value counts)."""
    from gru4rec.head_to_head import evaluate_on_new_split
    from tasks.registry import champion_snapshot, download_model_dir

    champion = champion_snapshot(tracking_uri, registry["name"])
    same_setting = bool(champion and champion.get("exclude_seen", False)) == exclude_seen
    if champion is None or (champion["split_fingerprint"] == split_fingerprint and same_setting):
        return None
    version = champion["version"]
    model_dir = download_model_dir(tracking_uri, registry["name"], version, Path(work_dir) / f"v{version}")
    report = evaluate_on_new_split(split_dir, model_dir, ks=tuple(ks), ties=ties, exclude_seen=exclude_seen)
    get_run_logger().info(
        "champion v%s on this run's test split: %s = %.4f (%s of %s targets are items it never saw)",
        version,
        registry["primary_metric"],
        report["metrics"][registry["primary_metric"]],
        f"{report['unknown_targets']:,}",
        f"{report['n_targets']:,}",
    )
    return {
        "champion_version": version,
        "value": report["metrics"][registry["primary_metric"]],
        "unknown_targets": report["unknown_targets"],
        "n_targets": report["n_targets"],
        "test_fingerprint": report["split_fingerprint"],
        "metrics": report["metrics"],
    }


@task(name="profile-data", **RETRY_OPTIONS, cache_policy=NO_CACHE)
def data_profile_task(split_dir: str, full: bool, out: str) -> str:
    """The profile of what the model trains on (logged with the run; the next run compares with it)."""
    from gru4rec.data.health import data_profile
    from gru4rec.io import write_json_atomic

    return str(write_json_atomic(out, data_profile(split_dir, full)))


@task(name="data-health", **RETRY_OPTIONS, cache_policy=NO_CACHE)
def data_health_task(
    profile: str, tracking_uri: str, registry_name: str, champion_version: str, thresholds: dict
) -> dict:
    """This run's data against the champion's (its logged data profile); warnings above thresholds."""
    from gru4rec.data.health import HealthThresholds, compare_profiles
    from tasks.registry import champion_profile

    reference = champion_profile(tracking_uri, registry_name, champion_version)
    if reference is None:
        return {"champion_version": champion_version, "compared": False, "warnings": []}
    current = json.loads(Path(profile).read_text(encoding="utf-8"))
    report = compare_profiles(current, reference, HealthThresholds(**thresholds))
    report |= {"champion_version": champion_version, "compared": True}
    report["sizes"] = {k: (reference.get(k), current[k]) for k in ("events", "sessions", "items")}
    for warning in report["warnings"]:
        get_run_logger().warning("data health: %s", warning)
    return report
